"""`niiv`: train, reconstruct, evaluate and inspect from the command line."""

from __future__ import annotations

import argparse
import errno
import functools
import inspect
import json
import math
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import __version__
from .data.degrade import ALPHA_RANGE, DEGRADATIONS, check_simulated_alpha
from .errors import NiivInputError
from .inference.settings import DEVICES, ORIENTATIONS, PRECISIONS, SCALE_RANGE, InferenceSettings
from .model.config import ARCHITECTURES

DESCRIPTION = """\
niiv makes anisotropic 3D microscopy volumes (z resolution worse than xy, e.g. serial-section EM
or light-sheet) look isotropic. It reconstructs the missing z detail of xz / yz slices with a small
neural network trained self-supervised on the volume's own xy planes.

  niiv info                          what is installed: devices, shipped and your own weights
  niiv info VOLUME                   shape, pixel type, voxel size and anisotropy of a volume
  niiv info WEIGHTS                  a weights file's (or name's) architecture and model card
  niiv reconstruct IN OUT            write the isotropic volume (OME-Zarr, TIFF or .npy)
  niiv train VOLUME... --out W       train (or fine-tune) weights on your own volumes
  niiv evaluate VOLUME...            simulate anisotropy on isotropic volumes and score methods

Volumes are ZYX: TIFF, zarr, OME-Zarr or .npy. "alpha" is the anisotropy: z voxel size divided by
xy voxel size (10 for 40 nm sections imaged at 4 nm).
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default="auto", help=f"{', '.join(DEVICES)} or cuda:N (default: auto, the GPU if there is one)"
    )


def _add_speed(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="arithmetic precision: auto = bf16 where the CPU or GPU has it (fp16 on older GPUs), else fp32; "
        "the difference to fp32 is < 0.001 dB CF-PSNR on held-out FIB-SEM (default: auto)",
    )
    p.add_argument(
        "--compile", action="store_true", help="compile the decoder with torch.compile (pays off on long runs)"
    )


def _parse_region(text: str | None) -> tuple[slice, ...] | None:
    """``z0:z1,y0:y1,x0:x1`` (each bound optional) -> three slices; anything else is refused."""
    if text is None or not text.strip():
        return None
    example = "write it as z0:z1,y0:y1,x0:x1 in input voxels, bounds optional (e.g. 122:250,:,0:250)"
    parts = text.split(",")
    if len(parts) != 3:
        raise NiivInputError(f"--region {text!r}: {len(parts)} range(s) given, three needed; {example}")
    out = []
    for part in parts:
        m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", part)
        if m is None:
            raise NiivInputError(f"--region {text!r}: {part.strip()!r} is not a range start:stop; {example}")
        lo, hi = (int(g) if g else None for g in m.groups())
        if lo is not None and hi is not None and hi <= lo:
            raise NiivInputError(f"--region {text!r}: {part.strip()!r} is empty (stop must exceed start); {example}")
        out.append(slice(lo, hi))
    return tuple(out)


def _source(text: str) -> Path | str:
    """An input: a local path, or an http(s):// / s3:// URL kept as text (a Path would mangle it)."""
    return text if "://" in text else Path(text)


def _resolved(src: Path | str) -> str:
    return src if isinstance(src, str) else str(src.resolve())


def _number(lo: float, hi: float, integer: bool = False, open_low: bool = False) -> Any:
    """An argparse type: a finite number in [lo, hi] ((lo, hi] with ``open_low``), else a message."""

    def parse(text: str) -> float | int:
        try:
            value: float | int = int(text) if integer else float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (lo < value if open_low else lo <= value) and value <= hi
        if not ok:
            kind = "a whole number" if integer else "a number"
            low = f"above {lo:g}" if open_low else f"from {lo:g}"
            raise argparse.ArgumentTypeError(f"{text!r}: give {kind} {low} to {hi:g}")
        return value

    return parse


def _usage_type(convert: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse type from a converter that refuses with :class:`NiivInputError`: its message
    becomes the one-line usage error."""

    @functools.wraps(convert)
    def parse(text: str) -> str:
        try:
            return convert(text)
        except NiivInputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


@_usage_type
def _focus(text: str) -> str:
    """An argparse type: ``DEGRADATION@LO-HI`` items, comma-separated (data.pairs.parse_focus)."""
    if not text:  # the default, run through here by argparse: no import (of torch) while parsing
        return text
    from .data.pairs import parse_focus

    return ",".join(f"{d}@{lo:g}-{hi:g}" for d, lo, hi in parse_focus(text))


@_usage_type
def _degradations(text: str) -> str:
    """An argparse type: comma-separated degradations (``thick``, ``thin``, ``psf`` or ``psf:FWHM``)."""
    from .data.degrade import parse_degradations

    return ",".join(str(d) for d in parse_degradations(text))


class _Alphas(tuple):
    """Parsed ``--alpha`` list of evaluate: a tuple, unlike the list argparse makes of ``--opt=--``."""


def _alphas(text: str) -> tuple[float, ...]:
    """An argparse type: one alpha or a comma-separated list (``3,4,6,8``), each in ``ALPHA_RANGE``
    and above 1 (a simulated anisotropy), each once."""
    one = _number(*ALPHA_RANGE)
    parts = [t for t in text.split(",")]
    if not parts or any(not t.strip() for t in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give an alpha or a comma-separated list such as 4,8,10")
    alphas = [one(t.strip()) for t in parts]
    try:
        for a in alphas:
            check_simulated_alpha(a)
    except NiivInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(set(alphas)) != len(alphas):
        raise argparse.ArgumentTypeError(f"{text!r}: give each alpha once")
    return _Alphas(alphas)


DEGRADATION_HELP = (
    "thick: sections averaged over their whole thickness (serial-section EM, thick FIB-SEM steps); "
    "thin: thin sections far apart, a one-voxel box at each section's centre (every alpha-th plane at an odd "
    "alpha, half of each of two planes at an even one); psf or psf:FWHM: a Gaussian axial blur of "
    "FWHM xy voxels (default one section spacing), light microscopy"
)


@_usage_type
def _degradation(text: str) -> str:
    """An argparse type: one degradation (``thick``, ``thin``, ``psf`` or ``psf:FWHM``)."""
    from .data.degrade import Degradation

    return str(Degradation.parse(text))


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end in one line that says what to do, exit code 2 (argparse prints the whole usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="niiv", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"napari-niiv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    info = sub.add_parser("info", help="show installed weights and devices, or describe a volume or weights file")
    info.add_argument("path", nargs="?", help="a volume, a weights file, or a weights name (listed by `niiv info`)")

    rec = sub.add_parser(
        "reconstruct",
        help="reconstruct an isotropic volume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reconstruct the isotropic volume of IN and write it to OUT.\n\n"
        "OUT ending in .zarr is written as a chunked OME-Zarr pyramid with the new voxel size, each\n"
        "chunk whole by one dask task (at full resolution a column of chunks along z, up to 16 M\n"
        "voxels): on local threads by default, on a LocalCluster with --workers N, or on a running\n"
        "dask.distributed cluster with --scheduler ADDRESS (workers must see IN and OUT).\n"
        "It is written to OUT.partial and renamed when complete; if a run is killed, running the\n"
        "same command again writes only the missing chunks. .tif and .npy are written whole (small\n"
        "volumes). OUT is never overwritten unless --overwrite is given. Integer inputs keep their\n"
        "pixel type (in a .tif only uint8, uint16 and int16; other integers become float32 there);\n"
        "float and bool inputs come out as float32.",
    )
    rec.add_argument("input", help="anisotropic volume (TIFF, zarr, OME-Zarr, .npy), axes ZYX")
    rec.add_argument("output", help="where to write (.zarr / .ome.zarr, .tif, .npy)")
    rec.add_argument("--alpha", type=_number(*ALPHA_RANGE), help="anisotropy z/xy; default: from the file's voxel size")
    rec.add_argument(
        "--scale",
        type=_number(*SCALE_RANGE),
        default=1.0,
        help="output voxel size in xy voxels: 1 = isotropic at full xy resolution, 2 = half as fine, "
        f"0.5 = twice as fine; from {SCALE_RANGE[0]:g} to {SCALE_RANGE[1]:g} (default 1)",
    )
    rec.add_argument(
        "--orientation",
        choices=ORIENTATIONS,
        default="both",
        help="reconstruct from xz slices, yz slices, or average both; auto means xz for a whole volume (default: both)",
    )
    rec.add_argument(
        "--weights", help="weights name (see `niiv info`) or .safetensors path; default: the shipped model"
    )
    rec.add_argument(
        "--degradation",
        type=_degradation,
        default=None,
        help="how the input's sections were made; weights with an acquisition embedding (niiv-em) are told "
        f"it, others ignore it (default thick). {DEGRADATION_HELP}",
    )
    rec.add_argument(
        "--region", help="only this part of the input, in input voxels: z0:z1,y0:y1,x0:x1 (e.g. 0:16,0:512,0:512)"
    )
    rec.add_argument(
        "--chunks",
        help="output chunk size z,y,x (default 64,256,256); a task computes up to 16 M voxels of them at once (one "
        "chunk, if larger): its memory",
    )
    rec.add_argument(
        "--levels",
        type=_number(1, 16, integer=True),
        help="pyramid levels, each half the size of the one before (default: down to 256 px)",
    )
    rec.add_argument(
        "--ngff",
        choices=("0.5", "0.4"),
        help="OME-Zarr version: 0.5 (zarr v3, current readers) or 0.4 (zarr v2, older readers) (default 0.5)",
    )
    rec.add_argument("--scheduler", metavar="ADDRESS", help="run on this dask.distributed scheduler (tcp://host:8786)")
    rec.add_argument(
        "--workers",
        type=_number(1, 256, integer=True),
        help="start a local dask.distributed cluster of N worker processes",
    )
    rec.add_argument(
        "--threads",
        type=_number(1, 256, integer=True),
        default=1,
        help="without a cluster: tasks computed at once on local threads (default 1)",
    )
    rec.add_argument(
        "--restart", action="store_true", help="discard an unfinished run's OUT.partial instead of resuming it"
    )
    rec.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    rec.add_argument(
        "--confidence",
        metavar="PATH",
        help="also write the confidence map to PATH, OUT's voxels: |xz - yz|, how much the reconstructions from xz "
        "and yz slices differ, in intensity units (high = unsure). A .zarr / .ome.zarr map has OUT's voxel size and "
        "translation (it overlays a .zarr OUT); a .tif or .npy one is written whole and, like a .tif or .npy OUT, "
        "starts at the origin. A second pass after OUT, decoding both xz and yz slices again",
    )
    _add_common(rec)
    _add_speed(rec)

    tr = sub.add_parser(
        "train",
        help="train or fine-tune weights on your volumes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Self-supervised training: xy crops of the volumes are pooled by alpha along one axis and\n"
        "the network learns to restore them. No isotropic ground truth is needed. A checkpoint is\n"
        "written beside OUT (OUT.ckpt.safetensors) every --checkpoint-every steps and on Ctrl-C\n"
        "(exit code 130); rerun the same command with --resume to continue: with --steps alone the\n"
        "result is bit for bit an uninterrupted run's. With --minutes the learning-rate schedule\n"
        "follows the training time, so no two runs are bit-identical: a resume continues the same\n"
        "batches from the checkpoint's step and the schedule from its recorded training time, and\n"
        "ends when the total training time reaches --minutes. One run per OUT (OUT.lock); a second\n"
        "is refused naming the first's pid. Everything is checked before the first step: the volumes,\n"
        "the held-out volume, --region, and that OUT's folder is writable and has room.",
    )
    tr.add_argument("volumes", nargs="+", help="training volumes (their xy planes are used)")
    tr.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    tr.add_argument(
        "--alpha",
        type=_number(*ALPHA_RANGE),
        required=True,
        help="anisotropy to train for (z voxel size / xy voxel size); with --alpha-max the low end of a range",
    )
    tr.add_argument(
        "--alpha-max",
        type=_number(*ALPHA_RANGE),
        help="train one model for any alpha from --alpha to this (drawn per step, fractions included)",
    )
    tr.add_argument(
        "--degradation",
        type=_degradations,
        default="thick",
        help=f"how sections are simulated from xy planes, comma-separated to mix ({', '.join(DEGRADATIONS)}; "
        f"default thick). {DEGRADATION_HELP}",
    )
    tr.add_argument(
        "--focus",
        type=_focus,
        default="",
        help="extra batches where a model is weakest, e.g. thick@10-12,thin@2-4 (DEGRADATION@LO-HI, inside "
        "--alpha..--alpha-max and --degradation); --focus-fraction of the batches go there",
    )
    tr.add_argument(
        "--focus-fraction",
        type=_number(0.0, 1.0),
        default=None,
        help="with --focus: the fraction of batches drawn from it, the rest uniform (default 0.5)",
    )
    tr.add_argument(
        "--arch",
        choices=ARCHITECTURES,
        help="v1: no attention (2024; the default: it beat v2 at equal budget on a CPU, and niiv-em is v1); "
        "v2: attention (paper 2025); fast: 3.5 %% of v2's FLOPs "
        "(niiv-fast, the live view's first frame); v2-input: v2 with its attention's neighbours one input "
        "pixel apart; with --init: the start weights'",
    )
    tr.add_argument(
        "--teacher",
        help="distil: learn these weights' outputs (a name, see `niiv info`, or a path) on the same crops "
        "instead of the true planes, e.g. --arch fast --teacher niiv-em",
    )
    tr.add_argument(
        "--acquisition-embedding",
        action="store_true",
        help="tell the network alpha and the kind of sections (a learned shift of the encoder's features, added "
        "at zero to --init weights that lack it): for one model of an alpha range or several --degradation",
    )
    tr.add_argument(
        "--init",
        help="start from these weights (fine-tuning) instead of random: a name (see `niiv info`) or a "
        "path, as --weights of reconstruct; fine-tuning defaults to the viewer panel's learning rate "
        "(1e-4) and warm-up (20 steps)",
    )
    tr.add_argument(
        "--steps", type=_number(1, 10_000_000, integer=True), default=5000, help="training steps (default 5000)"
    )
    tr.add_argument(
        "--minutes",
        type=_number(0, 100_000, open_low=True),
        help="stop after this many minutes of training in all, resumes included (the learning-rate schedule "
        "follows the time, so a run with --minutes is not bit-for-bit repeatable, resumed or not)",
    )
    tr.add_argument(
        "--lr",
        type=_number(0, 0.1, open_low=True),
        help="peak learning rate (default 5e-4; with --init 1e-4, the fine-tuning default)",
    )
    tr.add_argument("--batch", type=_number(1, 4096, integer=True), default=8, help="crops per step (default 8)")
    tr.add_argument(
        "--crop",
        type=_number(4, 4096, integer=True),
        default=64,
        help="side of the square xy training crops in px (default 64): at least 2 x alpha, at most the volumes' "
        "xy size",
    )
    tr.add_argument(
        "--region",
        help="train only on this part of every volume, in voxels: z0:z1,y0:y1,x0:x1 (e.g. 0:100,:,0:512)",
    )
    tr.add_argument(
        "--seed",
        type=_number(0, 2**31 - 1, integer=True),
        default=0,
        help="random seed (default 0): same seed, same run",
    )
    tr.add_argument("--held-out", help="an isotropic volume to check progress against bilinear (never trained on)")
    tr.add_argument(
        "--checkpoint-every",
        type=_number(1, 10_000_000, integer=True),
        default=250,
        help="write the checkpoint every N steps (default 250); Ctrl-C also writes one",
    )
    tr.add_argument(
        "--resume",
        action="store_true",
        help="continue the checkpoint beside --out; refused (exit 2) when there is none, or when this command's "
        "alpha, architecture, steps, batch, crop, learning rate, seed, data or --init file differ from the "
        "checkpoint's. A complete run gains no steps this way: fine-tune it (--init OUT) into another --out",
    )
    tr.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run, replacing --out (and its checkpoint) if they exist; not with --resume",
    )
    _add_common(tr)

    ev = sub.add_parser(
        "evaluate",
        help="score niiv against interpolation on isotropic volumes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Simulate anisotropy on isotropic volumes (sections alpha planes apart along z, made as\n"
        "--degradation says), reconstruct the xz slices back to full z resolution and compare with the\n"
        "original (paper, section 5): Fourier-clipped PSNR, PSNR and SSIM per slice, averaged, and\n"
        "seconds per volume. Every method is scored at each ground-truth plane's own depth (the planes\n"
        "the sections fully cover). --cube is checked before any scoring: two sections, SSIM's 11 px\n"
        "window and each weights file's receptive field must fit in it.",
    )
    ev.add_argument("volumes", nargs="+", help="isotropic volumes (ground truth)")
    ev.add_argument(
        "--alpha",
        type=_alphas,
        default=_Alphas((8.0,)),
        help="anisotropy to simulate, above 1 (default 8); a comma-separated list (3,4,6,8) scores each and adds a "
        "summary of the gains over bicubic",
    )
    ev.add_argument(
        "--degradation",
        type=_degradations,
        default="thick",
        help=f"how the sections are simulated, comma-separated for one table each (default thick). {DEGRADATION_HELP}",
    )
    ev.add_argument("--region", help="only this part of each volume: z0:z1,y0:y1,x0:x1")
    ev.add_argument(
        "--cube",
        type=_number(8, 4096, integer=True),
        default=128,
        help="cut the region into cubes of this size (default 128, as the paper)",
    )
    ev.add_argument(
        "--weights", action="append", default=[], help="niiv weights to score (repeatable); default: the shipped model"
    )
    ev.add_argument(
        "--slices",
        choices=("xz", "yz", "xy"),
        default="xz",
        help="which slices to score (default xz); xy: the xy planes degraded along y, for volumes whose z is "
        "itself blurred (light microscopy), so that the ground truth is sharp",
    )
    ev.add_argument(
        "--both",
        action="store_true",
        help="also score niiv reconstructed from xz and yz slices averaged (rows marked '+yz', '+xz' with --slices "
        "yz); not with --slices xy, whose yz slices would run along the blurred z",
    )
    ev.add_argument(
        "--cutoff",
        type=_number(0, 1000, open_low=True),
        default=25.0,
        help="CF-PSNR cutoff radius in DFT bins at 128x128 (default 25)",
    )
    ev.add_argument(
        "--json",
        metavar="FILE",
        help="also write the scores to this JSON file (never an input or weights file); an infinite score is null",
    )
    ev.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")
    _add_common(ev)
    _add_speed(ev)
    return parser


# The options that take several values, and what an empty item in one ('' from an unset shell
# variable, which was taken for the current folder) is refused with
EMPTY_ITEM = {
    "volumes": "a volume was given as an empty name: give each volume's file or store",
    "weights": "--weights was given an empty value: give a weights name (`niiv info` lists them) or file",
}
LIST_OPTIONS = tuple(EMPTY_ITEM)
FILE_METAVARS = ("FILE", "PATH", "INPUT", "OUTPUT")  # an empty one "needs a file name"


def _quiet_remote_cleanup() -> None:
    """When a remote (s3://) read fails, zarr's other reads still pending are closed at exit, in
    another context than aiobotocore entered, and each prints 'Exception ignored in: <coroutine
    ...> ... was created in a different Context' after niiv's one-line message. That one harmless
    report is dropped; every other unraisable exception goes to the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "niiv_quiet", False):
        return

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if (
            isinstance(exc, ValueError)
            and "was created in a different Context" in str(exc)
            and inspect.iscoroutine(unraisable.object)
        ):
            return
        previous(unraisable)

    hook.niiv_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _joined_regions(argv: list[str]) -> list[str]:
    """``--region -1:4,:,:`` as ``--region=-1:4,:,:``: argparse reads a value that starts with '-'
    as an option, and would answer 'expected one argument' instead of checking the region."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if i and argv[i - 1] == "--region" and arg.startswith("-") and out and out[-1] == "--region":
            out[-1] = f"--region={arg}"
        else:
            out.append(arg)
    return out


def _malformed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """What argparse lets through unchecked, said as a usage error: "--opt=--" turned into a list,
    and an empty value, which every `if args.opt` then took for "not given" (`--json ''` computed
    the scores and wrote them nowhere; `--confidence ''` wrote no map)."""
    command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    for action in command._actions:
        value = getattr(args, action.dest, None)
        kind = action.metavar or action.dest.upper()
        label = action.option_strings[-1] if action.option_strings else kind
        if isinstance(value, list) and action.dest not in LIST_OPTIONS:
            return f"{label} needs one value"
        if isinstance(value, list) and any(isinstance(v, str) and not v.strip() for v in value):
            return EMPTY_ITEM[action.dest]
        if isinstance(value, str) and not value.strip() and value != action.default:  # given, not defaulted
            return f"{label} needs a {'file name' if kind in FILE_METAVARS else 'value'}: it was empty"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_remote_cleanup()
    parser = build_parser()
    try:
        args = parser.parse_args(_joined_regions(sys.argv[1:] if argv is None else list(argv)))
    except SystemExit as exc:  # --help (0) or a usage error (2, its one line already printed)
        return int(exc.code or 0)
    said = _malformed(parser, args)
    if said:
        print(f"niiv {args.command}: error: {said} (see niiv {args.command} --help)", file=sys.stderr)
        return 2
    try:
        return {"info": cmd_info, "reconstruct": cmd_reconstruct, "train": cmd_train, "evaluate": cmd_evaluate}[
            args.command
        ](args)
    except NiivInputError as exc:
        print(f"niiv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"niiv {args.command}: interrupted" + (f"; {exc}" if str(exc) else ""), file=sys.stderr)
        return 130
    except OSError as exc:  # the disk filled up or went away during the work: say so in one line
        if not _said_in_one_line(exc):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"niiv {args.command}: error: {exc.strerror or exc}{where}; nothing was published: free space "
            "or fix the output folder, then run the same command again (a .zarr output resumes)",
            file=sys.stderr,
        )
        return 2


def _said_in_one_line(exc: BaseException) -> bool:
    """An error of the file system (full, read-only, no permission, gone) that main() reports in one line."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO)


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .data.io import describe, open_volume
    from .inference.devices import cpu_has_bf16, pick_device
    from .inference.weights import available_weights, load_weights, looks_like_weights

    if args.path:
        p = _source(args.path)
        named = available_weights().get(args.path) if isinstance(p, Path) and not p.exists() else None
        if named is not None or (isinstance(p, Path) and (str(p).endswith(".safetensors") or looks_like_weights(p))):
            w = load_weights(named or p)
            print(
                json.dumps(
                    {
                        "alpha": w.alpha,
                        "architecture": w.model.config.to_dict(),
                        "normalisation": w.normalisation.to_dict() if w.normalisation else None,
                        "card": w.card,
                    },
                    indent=2,
                )
            )
        else:
            if isinstance(p, Path) and not (p.exists() or p.is_symlink()):
                from .inference.weights import weights_suggestion

                hint = weights_suggestion(str(p))
                raise NiivInputError(
                    f"{p}: no such file or folder, nor weights of that name"
                    + (f" ({hint})" if hint else " (`niiv info` lists them)")
                )
            vol = open_volume(p)
            print(describe(vol))
            if vol.has_voxel_size:
                print(f"anisotropy alpha = {vol.alpha:g}")
            else:  # unknown is not alpha 1 (docs/reading.md)
                print("anisotropy alpha: unknown (the file gives no voxel sizes: pass --alpha)")
        return 0
    print(f"napari-niiv {__version__}, torch {torch.__version__}")
    print(
        f"device (auto): {pick_device('auto')}; CPU bf16: {'yes' if cpu_has_bf16() else 'no'}; "
        f"threads: {torch.get_num_threads()}"
    )
    print("weights:")
    for name, path in available_weights().items():
        try:
            w = load_weights(path)
            lo, hi = w.alpha_range
            span = f"alpha {lo:g}" if lo == hi else f"alpha {lo:g}-{hi:g}"
            kinds = ",".join(w.card.get("degradations") or ["thick"])
            told = " (told which: --degradation)" if w.model.config.acquisition_embedding else ""
            purpose = f", {w.card['purpose']}" if w.card.get("purpose") else ""
            arch = w.card.get("architecture", "?")
            print(f"  {name}: {span}, {kinds} sections{told}, {arch}{purpose}  ({path})")
        except NiivInputError as exc:
            print(f"  {name}: unusable ({exc})")
    return 0


OUTPUT_FORMATS = (".zarr", ".tif", ".tiff", ".npy")


def _weights_notes(loaded: Any, vol: Any, settings: Any, sections_given: bool) -> list[str]:
    """What to say of the weights before reconstructing ``vol`` (each a warning, never a refusal):
    trained for other alphas; made for the other kind of microscope than the volume looks like
    (``niiv-em``, the default, on a 16-bit confocal stack); and, when ``--degradation`` was given,
    sections or a psf width the weights never learned (niiv-lm ignores the sections it is given)."""
    from .inference.suggestion import alpha_fit_note, sections_fit_note, suggest_weights, weights_fit_note

    learned = loaded.card.get("degradations")
    voxel = vol.voxel_size if vol.has_voxel_size else (1.0, 1.0, 1.0)
    unit = vol.unit if vol.has_voxel_size else None
    alpha = alpha_fit_note(loaded.alpha_range, settings.alpha)
    notes = [f"was {alpha}" if alpha else None, weights_fit_note(suggest_weights(voxel, unit, vol.data.dtype), learned)]
    if sections_given:
        told = bool(loaded.model.config.acquisition_embedding)
        notes.append(sections_fit_note(learned, told, settings.degradation, settings.alpha))
    return [n for n in notes if n]


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .data.io import open_volume
    from .data.normalise import fit_normalisation
    from .inference.export import DEFAULT_CHUNKS
    from .inference.geometry import output_geometry
    from .inference.reconstructor import BlockReconstruction, assemble, check_reconstructable
    from .inference.store import (
        check_output_path,
        check_outside_input,
        check_room,
        check_writable,
        output_lock,
        written_by_niiv,
    )
    from .inference.weights import load_weights, resolve_weights

    for given, what in ((args.output, ""), (args.confidence, "--confidence ")):
        if given and "://" in given:  # a Path would write it to a local folder named after the URL ('s3:/...')
            raise NiivInputError(
                f"{what}{given}: niiv reconstruct writes to a path on this machine (or a mounted network folder), "
                "not to a URL; give a local path (e.g. iso.ome.zarr) and copy the finished store to the remote one "
                "yourself"
            )
    src, out = _source(args.input), Path(args.output)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        if out.name.lower() in OUTPUT_FORMATS:  # ".zarr": a name that is only an extension
            raise NiivInputError(f"{out}: give the output a name before its extension, e.g. iso{out.name}")
        raise NiivInputError(f"{out}: unknown output format; use .zarr / .ome.zarr, .tif or .npy")
    if out.suffix.lower() != ".zarr" and (args.scheduler or args.workers or args.threads != 1):
        raise NiivInputError(
            "--scheduler, --workers and --threads need a .zarr output; .tif and .npy are written whole"
        )
    conf = Path(args.confidence) if args.confidence else None
    # an OME-Zarr OUT already there may be this very reconstruction, finished by a run that was
    # stopped during its confidence map or just after OUT appeared (the user runs the same command
    # again, as an interrupted run says): checked against the job once it is made (_finished_store)
    done_before = (
        out.suffix.lower() == ".zarr"
        and out.is_dir()
        and not args.overwrite
        and written_by_niiv(out)  # any other folder is refused now, before the volume and weights load
    )
    if done_before:
        check_outside_input(out, src)
    else:
        check_output_path(out, args.overwrite, src)
    check_writable(out)
    if conf is not None:
        inside = conf.resolve() == out.resolve() or out.resolve() in conf.resolve().parents
        if conf.suffix.lower() not in OUTPUT_FORMATS or conf.name.lower() in OUTPUT_FORMATS or inside:
            raise NiivInputError(
                f"--confidence {conf}: give a .zarr / .ome.zarr (placed as OUT.zarr is), .tif or .npy path other "
                "than OUT and outside it"
            )
        if conf.resolve() in out.resolve().parents:  # OUT's folders would stand where the map goes
            raise NiivInputError(
                f"--confidence {conf}: OUT {out} lies inside it, so writing OUT would make the folder {conf} and "
                "leave no room for the map; give the map a path outside OUT's folders"
            )
        try:  # its words name the path; say it is the map's
            check_output_path(conf, args.overwrite, src)
            check_writable(conf)
        except NiivInputError as exc:
            said = str(exc)
            raise NiivInputError(f"--confidence {said if said.startswith(str(conf)) else f'{conf}: {said}'}") from None
    chunks = _parse_chunks(args.chunks) if args.chunks is not None else DEFAULT_CHUNKS
    zarr_options = [f"--{name}" for name in ("chunks", "levels", "ngff") if getattr(args, name) is not None]
    if zarr_options and not any(p.suffix.lower() == ".zarr" for p in (out, conf) if p is not None):
        raise NiivInputError(
            f"{' and '.join(zarr_options)} {'shape' if len(zarr_options) > 1 else 'shapes'} an OME-Zarr output; "
            f"{out.name} is written whole as {out.suffix}: drop {'them' if len(zarr_options) > 1 else 'it'}, or "
            "write OUT.ome.zarr"
        )
    region = _parse_region(args.region)
    vol = open_volume(src)
    if args.alpha is None and not vol.has_voxel_size:
        raise NiivInputError(
            f"{src} gives no voxel sizes, so its anisotropy is unknown: pass --alpha (z voxel size / xy voxel size)"
        )
    alpha = args.alpha
    if alpha is None:
        from .data.degrade import check_alpha

        try:
            alpha = check_alpha(vol.alpha)
        except NiivInputError:
            z, _, x = vol.voxel_size
            unit = f" {vol.unit}" if vol.unit else ""
            raise NiivInputError(
                f"{src}: its voxel sizes (z {z:g}{unit}, x {x:g}{unit}) give alpha {vol.alpha:g}, outside "
                f"{ALPHA_RANGE[0]:g} to {ALPHA_RANGE[1]:g}; if they are wrong, pass the anisotropy with --alpha"
            ) from None
    settings = InferenceSettings(
        alpha=alpha,
        scale=args.scale,
        orientation=args.orientation,
        device=args.device,
        precision=args.precision,
        compiled=args.compile,
        degradation=args.degradation or "thick",
    )
    settings.resolved()  # a missing GPU is reported here, not by every worker
    norm = fit_normalisation(vol.data)  # also rejects NaNs before any model work
    weights = resolve_weights(args.weights)
    loaded = load_weights(weights)
    model = loaded.model
    check_reconstructable(vol.shape, model, settings.volume_orientation)
    for note in _weights_notes(loaded, vol, settings, args.degradation is not None):
        print(f"niiv reconstruct: note: {loaded.card.get('name') or weights.stem} {note}", file=sys.stderr)
    geometry = output_geometry(
        vol.shape,
        settings.alpha,
        settings.scale,
        vol.voxel_size if vol.has_voxel_size else None,
        vol.translation,
        vol.unit,
        region,
    )
    if args.alpha is not None and vol.has_voxel_size and not math.isclose(args.alpha, vol.alpha, rel_tol=1e-3):
        # the output still tiles the file's extent: its z voxel is the file's z voxel / --alpha
        vz, _, vx = geometry.voxel_size
        unit = f" {vol.unit}" if vol.unit else ""
        lo, hi = ALPHA_RANGE
        advice = (  # leaving --alpha out is refused for a file's alpha outside the range
            "if the file's voxel sizes are right, leave out --alpha"
            if lo <= vol.alpha <= hi
            else "if the file's voxel sizes are wrong, correct them in the file for isotropic voxels"
        )
        print(
            f"niiv reconstruct: warning: --alpha {args.alpha:g} is not the alpha of {src}'s voxel sizes "
            f"({vol.alpha:g}); the output keeps the file's extent, so its voxels are {vz:g}{unit} in z and "
            f"{vx:g}{unit} in y and x, not isotropic: {advice}",
            file=sys.stderr,
        )
    dtype = _output_dtype(vol.data.dtype, out)
    if out.suffix.lower() != ".zarr":  # written whole and uncompressed: the size is known
        check_room(out, int(np.prod(geometry.size)) * dtype.itemsize + 2**20, "this output")
    job = BlockReconstruction(_resolved(src), norm, model, settings, geometry, dtype)
    print(
        f"{vol.name}: {vol.shape} alpha {settings.alpha:g} -> {geometry.size} "
        f"({settings.volume_orientation}, scale {settings.scale:g})",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    if done_before:
        _finished_store(out, job, _resolved(_source(args.input)), args, chunks)
        print(
            f"{out} is already this reconstruction (same input and settings): "
            + ("writing only the confidence map" if conf else "nothing to do (--overwrite writes it again)"),
            file=sys.stderr,
        )
    elif out.suffix.lower() != ".zarr":
        with output_lock(out):  # one run per output (a .zarr one takes it in write_isotropic)
            _write_array(out, assemble(job, chunks), geometry.voxel_size, geometry.unit, args.overwrite)
        print(f"wrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    else:
        # the input's own display window (an OME-Zarr's omero), else the normalisation's
        _write_pyramid(args, out, job, chunks, vol.contrast or (norm.low, norm.high))
    if conf is not None:
        try:
            _write_confidence(args, conf, job, chunks, norm, geometry)
        except KeyboardInterrupt as exc:  # OUT is published: say so, and how to get the map
            again = (
                "run the same command again to write only the map"
                if out.suffix.lower() == ".zarr"
                else "to write it, run again with --overwrite (OUT is then reconstructed again; a .zarr OUT is not)"
            )
            from .inference.store import partial_path

            # (a .zarr map's own words, 'the chunks written so far are in ...: run the same command
            # again ...', said the same as `again` a second time, in nested parentheses)
            partial = partial_path(conf)
            kept = f"; its chunks written so far wait in {partial}" if partial.is_dir() else ""
            raise KeyboardInterrupt(f"{out} is complete, the confidence map is not: {again}{kept}") from exc
    return 0


def _write_confidence(
    args: argparse.Namespace, conf: Path, job: Any, chunks: tuple[int, int, int], norm: Any, geometry: Any
) -> None:
    """`niiv reconstruct --confidence`'s pass after OUT: a .zarr map has OUT's voxel size and translation."""
    from .inference.reconstructor import assemble
    from .inference.store import check_room, output_lock

    if conf.suffix.lower() == ".zarr":
        from .inference.confidence import contrast_limits

        _write_pyramid(args, conf, job.confidence_map(), chunks, contrast_limits(norm), "confidence map")
        return
    check_room(conf, int(np.prod(geometry.size)) * 4 + 2**20, "the confidence map")
    with output_lock(conf):
        _write_array(conf, assemble(job.confidence_map(), chunks), geometry.voxel_size, geometry.unit, args.overwrite)
    print(f"wrote the confidence map {conf}", file=sys.stderr)


def _finished_store(out: Path, job: Any, input_id: str, args: argparse.Namespace, chunks: tuple[int, ...]) -> None:
    """Refuse ``out`` unless it is niiv's finished store of exactly ``job`` (its recorded
    fingerprint: input content, settings, geometry, weights) in the layout asked for (levels,
    chunks, NGFF version: not in the fingerprint, as a resume compares them on their own)."""
    import zarr

    from .inference.export import fingerprint

    try:
        group = zarr.open_group(str(out), mode="r")
        recorded = dict(group.attrs).get("niiv")
    except Exception:  # not a zarr group at all
        group = recorded = None
    same = recorded == json.loads(json.dumps(fingerprint(job, input_id)))
    if not (same and _same_layout(group, job.geometry.size, args, chunks)):
        raise NiivInputError(
            f"{out} already exists, a reconstruction of another input or with other settings or weights; "
            "choose another output path or pass --overwrite"
        )


def _same_layout(group: Any, size: tuple[int, ...], args: argparse.Namespace, chunks: tuple[int, ...]) -> bool:
    """Whether the store ``group`` has the levels, chunks and NGFF version these ``args`` write."""
    from .inference.geometry import pyramid_shapes
    from .inference.store import NGFF_VERSIONS

    shapes = [tuple(s) for s in pyramid_shapes(size, args.levels)]
    if str(len(shapes)) in group or any(str(level) not in group for level in range(len(shapes))):
        return False
    arrays = [group[str(level)] for level in range(len(shapes))]
    return (
        [a.shape for a in arrays] == shapes
        and arrays[0].chunks == tuple(min(c, s) for c, s in zip(chunks, shapes[0], strict=True))
        and group.metadata.zarr_format == (3 if (args.ngff or NGFF_VERSIONS[0]) == "0.5" else 2)
    )


def _write_pyramid(
    args: argparse.Namespace,
    out: Path,
    job: Any,
    chunks: tuple[int, int, int],
    window: Any,
    what: str = "reconstructing",
) -> None:
    """The OME-Zarr path of `niiv reconstruct`: resumable, on the runner the options ask for;
    ``what`` names the progress bar (the map's pass is not a second reconstruction)."""

    from tqdm.auto import tqdm

    from .inference.export import write_isotropic
    from .inference.geometry import pyramid_shapes
    from .inference.runners import open_runner
    from .inference.store import NGFF_VERSIONS, partial_path

    partial = partial_path(out)
    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # the first call says what an earlier run already wrote
            bar = tqdm(total=total, initial=done, desc=what, unit="vox", unit_scale=True, smoothing=0.1)
        else:
            bar.update(done - bar.n)

    try:
        with open_runner(args.scheduler, args.workers, args.threads) as runner:
            print(f"running on {runner.description}", file=sys.stderr)
            report = write_isotropic(
                out,
                job,
                chunks=chunks,
                levels=args.levels,
                ngff=args.ngff or NGFF_VERSIONS[0],
                contrast=window,
                runner=runner,
                resume=True,
                restart=args.restart,
                overwrite=args.overwrite,
                input_id=_resolved(_source(args.input)),
                on_progress=progress,
            )
    except BaseException as exc:
        if bar is not None:
            bar.close()
        kept = (
            f"the chunks written so far are in {partial}: run the same command again to write only the missing "
            "ones (or pass --restart to begin anew)"
        )
        if isinstance(exc, KeyboardInterrupt) and partial.exists():
            raise KeyboardInterrupt(kept) from exc  # main() says it in its one line
        if isinstance(exc, NiivInputError) and bar is not None and partial.exists():
            # found while writing (a NaN the checks' sample missed): a fixed input makes the kept
            # chunks stale, and a rerun then refuses them until told to discard them
            raise NiivInputError(
                f"{exc}; {partial} keeps the chunks written before: once the input is fixed, rerun with --restart"
            ) from exc
        if partial.exists() and not isinstance(exc, NiivInputError) and not _said_in_one_line(exc):
            print(f"niiv reconstruct: stopped; {kept}", file=sys.stderr)  # before the traceback
        raise
    if bar is not None:
        bar.close()
    levels = len(pyramid_shapes(job.geometry.size, args.levels))
    resumed = f", {report.chunks_resumed} were already written by an earlier run" if report.chunks_resumed else ""
    print(
        f"wrote {out}: {levels} levels, {report.chunks_written} of {report.chunks_total} chunks "
        f"written now{resumed}, in {report.seconds:.1f} s",
        file=sys.stderr,
    )


# The integer types an ImageJ TIFF holds (besides float32): tifffile refuses int8, int32, uint32 and 64 bits.
IMAGEJ_INTEGERS = ("uint8", "uint16", "int16")


def _output_dtype(dtype: Any, out: Path) -> np.dtype:
    """OUT's pixel type: the input's integer type where OUT's format holds it, float32 otherwise
    (float and bool inputs, and in a .tif integers ImageJ cannot hold)."""
    d = np.dtype(dtype)
    if d.kind in "ui" and (out.suffix.lower() not in (".tif", ".tiff") or d.name in IMAGEJ_INTEGERS):
        return d
    return np.dtype(np.float32)


def _parse_chunks(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(re.fullmatch(r"\s*\d+\s*", p) for p in parts):
        raise NiivInputError(f"--chunks {text!r}: give three whole numbers z,y,x (e.g. 64,256,256)")
    chunks = tuple(int(p) for p in parts)
    if not all(1 <= c <= 4096 for c in chunks):
        raise NiivInputError(f"--chunks {text!r}: each size must be from 1 to 4096 voxels")
    return chunks  # type: ignore[return-value]


def _write_array(
    out: Path, result: np.ndarray, voxel: tuple[float, float, float], unit: str | None, overwrite: bool
) -> None:
    """Whole-array outputs (.tif with ImageJ voxel sizes, .npy), written atomically; without
    ``overwrite`` a file that appeared at ``out`` while it was computed is kept."""
    import tifffile

    from .inference.weights import atomic_write

    if out.suffix.lower() in (".tif", ".tiff"):
        vz, vy, vx = voxel
        meta = {"spacing": vz, "axes": "ZYX", **({"unit": unit} if unit else {})}

        def write(tmp: Path) -> None:
            tifffile.imwrite(tmp, result, imagej=True, resolution=(1 / vx, 1 / vy), metadata=meta)
    else:

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a path
                np.save(f, result, allow_pickle=False)

    try:
        atomic_write(out, write, replace=overwrite)
    except FileExistsError:
        raise NiivInputError(
            f"{out} appeared while niiv computed it (another program or run wrote it) and was left as it is; "
            "choose another output path, or pass --overwrite"
        ) from None


def cmd_train(args: argparse.Namespace) -> int:
    from .inference.store import check_outside_input, output_lock
    from .training.train import check_output

    if args.focus_fraction is not None and not args.focus:
        raise NiivInputError(
            f"--focus-fraction {args.focus_fraction:g} does nothing without --focus (where those batches go, e.g. "
            "--focus thick@10-12): add --focus, or drop --focus-fraction"
        )
    if args.focus and args.focus_fraction == 0:
        raise NiivInputError(
            f"--focus {args.focus} with --focus-fraction 0 draws no batch there: drop --focus-fraction (half of "
            "the batches, the default) or give another fraction, or drop --focus"
        )
    if args.resume and args.overwrite:  # the resume won silently, and the user may have meant to start anew
        raise NiivInputError(
            "--resume continues the checkpoint beside --out, --overwrite starts a new run in its place: give one of "
            "them"
        )
    if "://" in args.out:  # a Path would write it to a local folder named after the URL ('s3:/...')
        raise NiivInputError(
            f"--out {args.out}: niiv train writes weights to a path on this machine (or a mounted network folder), "
            "not to a URL; give a local path (e.g. my_a10.safetensors) and copy the weights to the remote one yourself"
        )
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise NiivInputError(f"--out {out}: weights are written as .safetensors; give a name ending in .safetensors")
    if out.stem.lower().endswith(".ckpt"):
        raise NiivInputError(
            f"--out {out}: names ending in .ckpt.safetensors are those of training checkpoints (a run of "
            f"{out.name.removesuffix('.ckpt.safetensors')} would replace it); choose another --out"
        )
    for path in [*args.volumes, *([args.held_out] if args.held_out else [])]:
        check_outside_input(out, path)  # nothing (weights, lock) goes into an input's folder store
    if args.held_out and "://" not in args.held_out:
        trained_on = [v for v in args.volumes if "://" not in v and _same_file(Path(v), Path(args.held_out))]
        if trained_on:
            raise NiivInputError(
                f"--held-out {args.held_out} is also a volume it trains on, so its scores would not be held out: "
                "give an isotropic volume it does not train on"
            )
    for option in ("init", "teacher"):  # the start weights, with --overwrite too
        given = getattr(args, option)
        if given and _same_file(out, _weights_path(given)):
            raise NiivInputError(
                f"--out {out} is the --{option} weights: training would replace them; choose another --out"
            )
    check_output(out)
    with output_lock(out):  # one run per --out, over the checks below too (train() holds it on)
        return _train_locked(args, out)


def _weights_path(name_or_path: str) -> Path | None:
    """The file a weights name or path stands for, None when there is none (refused later)."""
    from .inference.weights import resolve_weights

    try:
        return resolve_weights(name_or_path)
    except NiivInputError:
        return None


def _same_file(a: Path, b: Path | None) -> bool:
    return b is not None and a.resolve() == b.resolve()


def _check_same_start(ckpt: Path, init: Path, given: str) -> None:
    """Refuse a resume whose --init is not the file the checkpoint's run started from: the resume
    continues the checkpoint's weights whatever --init says, so another start was silently ignored
    (a run started from random weights, given an --init, is refused by its settings: warm-up)."""
    from .inference.weights import read_metadata
    from .training.train import file_sha256

    try:
        card = json.loads(read_metadata(ckpt).get("card", "{}"))
    except (NiivInputError, ValueError):
        return  # a damaged checkpoint: train() says so
    recorded = card.get("fine_tuned_from_sha256") if isinstance(card, dict) else None
    if not isinstance(recorded, str):
        return  # a checkpoint from before the start was recorded by content
    if file_sha256(init) != recorded:
        raise NiivInputError(
            f"cannot resume {ckpt}: its run started from the weights {card.get('fine_tuned_from')} (--init), and "
            f"--init {given} is not that file (another file, or changed since); a resume continues the checkpoint's "
            "own weights: give the run's --init, or start a new run (without --resume, with --overwrite)"
        )


def _train_locked(args: argparse.Namespace, out: Path) -> int:
    from .data.degrade import check_alpha, parse_degradations
    from .data.io import open_volume
    from .inference.weights import load_weights, resolve_weights
    from .model import NiivConfig
    from .training.regions import volume_region
    from .training.train import (
        HeldOutCheck,
        TrainingInterrupted,
        TrainSettings,
        architecture_name,
        check_new_run,
        checkpoint_path,
        fine_tune_settings,
        same_architecture,
        train,
    )

    ckpt = checkpoint_path(out)
    if args.resume and not ckpt.exists():
        raise NiivInputError(
            f"--resume: nothing to resume, there is no checkpoint {ckpt} (a run writes it beside --out every "
            "--checkpoint-every steps and on Ctrl-C); run without --resume to start training"
        )
    # the rule is train()'s (overwrite=args.overwrite below), said here in the CLI's words before any volume is read
    check_new_run(out, resume=args.resume, overwrite=args.overwrite, options=("--out", "--resume", "--overwrite"))
    alpha = check_alpha(args.alpha)
    if args.alpha_max is not None and args.alpha_max < alpha:
        raise NiivInputError(
            f"--alpha-max {args.alpha_max:g} is below --alpha {alpha:g}: give the range's low end as --alpha"
        )
    region = _parse_region(args.region)
    if args.teacher:
        try:
            load_weights(resolve_weights(args.teacher))
        except NiivInputError as exc:
            raise NiivInputError(f"--teacher {args.teacher}: {exc}") from exc
    init = start = None
    if args.init:
        init = resolve_weights(args.init)
        start = load_weights(init)
        if args.arch and not same_architecture(NiivConfig.named(args.arch), start.model.config):
            raise NiivInputError(
                f"--arch {args.arch}: the --init weights {args.init} are another architecture "
                f"({architecture_name(start.model.config.to_dict())}), which fine-tuning keeps; drop --arch"
            )
    if args.resume and init is not None:
        _check_same_start(ckpt, init, args.init)
    vols = []
    for path in args.volumes:
        vol = open_volume(path)
        if region is not None:
            try:
                vol = volume_region(vol, region)
            except NiivInputError as exc:
                raise NiivInputError(f"--region {args.region} on {path}: {exc}") from exc
        vols.append(vol)
    held = None
    if args.held_out:
        try:
            # scored as the run trains: its (first) degradation, at --alpha
            scored = parse_degradations(args.degradation)[0]
            held = HeldOutCheck([np.asarray(open_volume(args.held_out).data)], alpha, degradation=scored)
            held.check_fits(start.model.config if start else NiivConfig.named(args.arch or ARCHITECTURES[0]))
        except NiivInputError as exc:
            raise NiivInputError(f"--held-out {args.held_out}: {exc}") from exc
    defaults = fine_tune_settings(alpha) if start else TrainSettings()
    lr = args.lr if args.lr is not None else defaults.lr
    settings = TrainSettings(
        alpha=alpha,
        alpha_max=args.alpha_max,
        degradations=args.degradation,
        focus=args.focus,
        focus_fraction=(0.5 if args.focus_fraction is None else args.focus_fraction) if args.focus else 0.0,
        architecture=args.arch or (start.card.get("architecture", "custom") if start else TrainSettings.architecture),
        steps=args.steps,
        lr=lr,
        warmup=defaults.warmup,
        batch=args.batch,
        crop=args.crop,
        seed=args.seed,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        time_budget=args.minutes * 60 if args.minutes else None,
        teacher=args.teacher,
        acquisition_embedding=args.acquisition_embedding,
    )
    if start:
        chosen = "given by --lr" if args.lr is not None else "the fine-tuning default; --lr sets another"
        print(
            f"fine-tuning {args.init}: learning rate {lr:g} ({chosen}), warm-up {settings.warmup} steps "
            "(the fine-tuning default)",
            file=sys.stderr,
        )
    card = {"region": args.region} if region is not None else None
    had_weights = out.exists()
    try:
        result = train(
            vols, settings, out, init=init, resume=args.resume, held_out=held, card=card, overwrite=args.overwrite
        )
    except TrainingInterrupted as exc:
        again = "run the same command again" if args.resume else "run the same command with --resume"
        code, what = (143, "terminated") if exc.signum == signal.SIGTERM else (130, "interrupted")
        if exc.checkpoint is None:
            print(f"niiv train: {what} before the first checkpoint; nothing to resume", file=sys.stderr)
        elif exc.saved_now:
            print(
                f"niiv train: {what}; step {exc.step} of {exc.steps} saved in {exc.checkpoint}: to continue, {again}",
                file=sys.stderr,
            )
        else:
            print(
                f"niiv train: {what} at once; {exc.checkpoint} holds step {exc.step} of {exc.steps} "
                f"(later steps are lost): to continue, {again}",
                file=sys.stderr,
            )
        return code
    except FloatingPointError as exc:  # the loss diverged
        raise NiivInputError(f"{exc} with --lr") from exc
    if args.resume and result.started_at == result.steps_done:
        if result.steps_done < settings.steps:  # its --minutes are spent: a larger one continues the same run
            further = "its time limit is spent: to go on, give a larger --minutes with --resume"
        else:  # --steps is the run's (its learning-rate schedule): a resume with another is refused
            further = (
                "the run is complete, and --resume cannot add steps (--steps sets its learning-rate schedule): "
                f"to train further, fine-tune these weights in a new run (--init {result.weights} "
                "--out ANOTHER.safetensors)"
            )
        held = (
            f"{result.weights} already holds step {result.steps_done}"
            if had_weights  # else killed while writing them, or moved away: written now from the checkpoint
            else f"wrote the missing weights {result.weights} from the checkpoint's step {result.steps_done}"
        )
        print(
            f"niiv train: nothing left to train: {held} (of {settings.steps}) and trained no further; {further}",
            file=sys.stderr,
        )
        return 0
    msg = f"wrote {result.weights} after {result.steps_done} steps in {result.seconds / 60:.1f} min"
    if result.steps_done < settings.steps and settings.time_budget is not None:
        msg += (
            f" (of {settings.steps}: the time limit of {args.minutes:g} min was reached; to go on, run it again "
            "with --resume and a larger --minutes)"
        )
    if result.held_out and held is not None:
        ho = result.held_out
        msg += (
            f"; held-out CF-PSNR {ho['cf_psnr']:.2f} dB ({ho['cf_psnr_gain']:+.2f} vs bilinear, "
            f"{ho['cf_psnr_gain_bicubic']:+.2f} vs bicubic; {held.degradation} sections, alpha {alpha:g})"
        )
    print(msg, file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.degrade import parse_degradations
    from .data.io import open_volume
    from .inference.geometry import check_region
    from .inference.store import check_output_path, check_outside_input, check_writable
    from .inference.suggestion import alpha_fit_note, sections_fit_note, suggest_weights, weights_fit_note
    from .inference.weights import load_weights, resolve_weights
    from .training.evaluate import (
        blank,
        check_evaluable,
        cut_cubes,
        evaluate,
        format_gains,
        format_table,
        intensity_range,
        interpolation,
        lateral_planes,
        niiv_method,
    )

    alphas = list(args.alpha)
    degradations = parse_degradations(args.degradation)
    if args.both and args.slices == "xy":
        raise NiivInputError(
            "--both decodes yz slices too, whose columns run along z: with --slices xy that is the blurred axis "
            "xy mode avoids; leave --both out"
        )
    if args.json:  # before the scoring, not after it
        out = Path(args.json)
        for source in [*args.volumes, *(resolve_weights(spec) for spec in args.weights or [None])]:
            check_outside_input(out, source)
        check_writable(out, file=True)  # a folder is refused here, with --overwrite too
        check_output_path(out, args.overwrite)
    widest = max(alphas)
    if args.cube < 2 * widest:
        raise NiivInputError(
            f"--cube {args.cube}: a cube degraded by alpha {widest:g} needs at least {math.ceil(2 * widest)} "
            "voxels a side"
        )
    given: dict[str, str] = {}
    for path in args.volumes:  # one volume twice counts its blocks twice in every mean
        key = _resolved(_source(path))
        if key in given:
            raise NiivInputError(f"{path} is given twice (as {given[key]} too); give each volume once")
        given[key] = path
    region = _parse_region(args.region)
    xy = args.slices == "xy"

    def zyx(shape: tuple[int, ...]) -> str:  # a block's shape as the user's axes: xy blocks are (y, z, x)
        return "x".join(str(n) for n in ((shape[1], shape[0], shape[2]) if xy else shape))

    cubes, ranges, kinds = [], [], []
    notes: list[str] = []  # said once every volume is read: a refusal of a later one comes first
    for path in args.volumes:
        what = "the region" if region else "the volume"
        try:  # with several volumes, a refusal says which
            vol = open_volume(path)
            data = np.asarray(vol.data[check_region(region, vol.shape)] if region else vol.data)
            scale = intensity_range(data)  # the volume's own range, shared by its cubes
            if xy:  # every plane counts, however few: blocks as deep as the volume
                data = lateral_planes(data)
                cut = cut_cubes(data, (args.cube, min(args.cube, data.shape[1]), args.cube), ("y", "z", "x"), what)
            else:
                cut = cut_cubes(data, args.cube, what=what)
        except NiivInputError as exc:
            raise NiivInputError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
        if vol.has_voxel_size and not xy and not 0.8 <= vol.alpha <= 1.25:
            notes.append(
                f"niiv evaluate: note: {path}'s voxel sizes give alpha {vol.alpha:g}, not an isotropic volume: its "
                "z is scored as sharp ground truth; for a volume whose z is coarse or blurred use --slices xy"
            )
        elif not vol.has_voxel_size and not xy:  # nothing says whether its z is as sharp as its x and y
            notes.append(
                f"niiv evaluate: note: {path} gives no voxel sizes: its z is scored as sharp ground truth, as an "
                "isotropic volume's; if it was acquired in sections or with a blurred z, use --slices xy"
            )
        # a blank block (a black border) has nothing to score: left out, said, never the whole run refused
        kept = [c for c in cut if not blank(c, 2 if args.slices == "yz" else 1)]
        if not kept:
            raise NiivInputError(
                f"{path}: {what} is constant (blank) in every {args.slices} slice: there is nothing to score on it; "
                "leave it out, or give a --region with structure"
            )
        if len(kept) < len(cut):
            notes.append(
                f"niiv evaluate: note: {path}: {len(cut) - len(kept)} of {len(cut)} block(s) of {zyx(cut[0].shape)} "
                "are blank (constant) and left out"
            )
        cubes += kept
        ranges += [scale] * len(kept)
        voxel = vol.voxel_size if vol.has_voxel_size else (1.0, 1.0, 1.0)
        kinds.append((path, suggest_weights(voxel, vol.unit if vol.has_voxel_size else None, vol.data.dtype)))
    for note in notes:
        print(note, file=sys.stderr)
    settings = InferenceSettings(
        alpha=alphas[0],
        orientation="xz" if args.slices == "xy" else args.slices,
        device=args.device,
        precision=args.precision,
        compiled=args.compile,
    ).resolved()
    methods = {m: interpolation(m) for m in ("nearest", "bilinear", "bicubic")}
    trained: dict[str, tuple[float, float]] = {}
    learned: dict[str, tuple[Any, bool]] = {}  # name -> (card degradations, told the sections)
    models: dict[str, Any] = {}
    seen: set[Path] = set()
    for spec in args.weights or [None]:
        path = resolve_weights(spec).resolve()
        if path in seen:
            raise NiivInputError(f"--weights {spec} is given twice; give each weights file once")
        seen.add(path)
        w = load_weights(path)
        name = w.card.get("name") or path.stem
        if name in methods:  # two files with the same card name (a retrained copy): one row each
            name = f"{name} ({spec})"
        trained[name] = w.alpha_range
        learned[name] = (w.card.get("degradations"), bool(w.model.config.acquisition_embedding))
        models[name] = w.model
        for path, suggestion in kinds:  # niiv-em on a confocal stack, niiv-lm on EM: as reconstruct says
            note = weights_fit_note(suggestion, learned[name][0])
            if note:
                print(f"niiv evaluate: note: {path}: {name} {note}", file=sys.stderr)
        methods[name] = niiv_method(w.model, settings)
        if args.both:
            # the slices added to the scored ones: '+yz' to xz (the default), '+xz' to --slices yz
            other = " +xz" if args.slices == "yz" else " +yz"
            methods[name + other] = niiv_method(w.model, settings.replace(orientation="both"))
    for shape in dict.fromkeys(c.shape for c in cubes):  # before any scoring
        for alpha in alphas:
            for orientation in (settings.orientation, "both") if args.both else (settings.orientation,):
                check_evaluable(
                    shape,
                    alpha,
                    "xz" if args.slices == "xy" else args.slices,
                    models,
                    orientation,
                    f"--cube {args.cube}: a block of {zyx(shape)} (z, y, x)",
                    "give a larger --cube",
                )
    scores = []
    for degradation in degradations:
        for alpha in alphas:
            for name, trained_range in trained.items():
                note = alpha_fit_note(trained_range, alpha)
                if note:
                    print(f"niiv evaluate: note: {name} was {note}", file=sys.stderr)
                note = sections_fit_note(*learned[name], degradation, alpha)
                if note:  # the scores are right, but for a method used outside what it learned
                    print(f"niiv evaluate: note: {name} {note}", file=sys.stderr)
            print(
                f"{len(cubes)} block(s) of {zyx(cubes[0].shape)} (z, y, x), alpha {alpha:g}, "
                f"{degradation} degradation, "
                + ("xy planes degraded along y" if args.slices == "xy" else f"{args.slices} slices"),
                file=sys.stderr,
            )
            slices = "xz" if args.slices == "xy" else args.slices  # xy: cubes were transposed
            part = evaluate(cubes, alpha, methods, args.cutoff, slices, ranges, degradation)
            if part[0].blocks < len(cubes):  # constant on every plane the sections cover at this alpha
                print(
                    f"niiv evaluate: note: {len(cubes) - part[0].blocks} of {len(cubes)} block(s) are constant on "
                    f"every plane scored at alpha {alpha:g} and left out: {part[0].blocks} scored",
                    file=sys.stderr,
                )
            if len(alphas) > 1 or len(degradations) > 1:
                print(f"\n### alpha {alpha:g}, {degradation}\n")
            print(format_table(part, args.cutoff))
            scores += part
    if len(alphas) > 1 or len(degradations) > 1:
        print("\n### gains over bicubic\n")
        print(format_gains(scores))
    if args.json:
        from .inference.weights import atomic_write

        # strict JSON: an infinite score (a perfect reconstruction) is null, never Infinity; each row says
        # what its numbers measure (the slices, the CF-PSNR cutoff, the blocks scored), as the tables' headers do
        setup = {
            "slices": args.slices,
            "cutoff": args.cutoff,
            "cube": args.cube,
            "region": args.region.strip() if args.region and args.region.strip() else None,
            "volumes": [_resolved(_source(v)) for v in args.volumes],
        }
        rows = [
            {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in s.__dict__.items()} | setup
            for s in scores
        ]
        text = json.dumps(rows, indent=2, allow_nan=False)
        try:  # a file that appeared there while scoring is another run's: kept unless --overwrite
            atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text), replace=args.overwrite)
        except FileExistsError:
            raise NiivInputError(
                f"{args.json} appeared while scoring (another run?) and was kept; the scores are printed above: "
                "run again with --overwrite to replace it, or with another --json path"
            ) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
