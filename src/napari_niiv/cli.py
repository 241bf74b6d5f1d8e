"""`niiv`: train, reconstruct, evaluate and inspect from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import NiivInputError
from .inference.settings import DEVICES, ORIENTATIONS, PRECISIONS, SCALE_RANGE, InferenceSettings
from .model.config import ARCHITECTURES

DESCRIPTION = """\
niiv makes anisotropic 3D microscopy volumes (z resolution worse than xy, e.g. serial-section EM
or light-sheet) look isotropic. It reconstructs the missing z detail of xz / yz slices with a small
neural network trained self-supervised on the volume's own xy planes.

  niiv info                          what is installed: devices, shipped and your own weights
  niiv info VOLUME                   shape, pixel type, voxel size and anisotropy of a volume
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
        "the difference to fp32 is < 0.01 dB CF-PSNR (default: auto)",
    )
    p.add_argument(
        "--compile", action="store_true", help="compile the decoder with torch.compile (pays off on long runs)"
    )


def _parse_region(text: str | None) -> tuple[slice, ...] | None:
    if not text:
        return None
    try:
        parts = [tuple(int(v) if v else None for v in s.split(":")) for s in text.split(",")]
        return tuple(slice(*p) for p in parts)
    except ValueError as exc:
        raise NiivInputError(f"--region {text!r}: write it as z0:z1,y0:y1,x0:x1 (e.g. 122:250,0:250,0:250)") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="niiv", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"napari-niiv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="show installed weights and devices, or describe a volume or weights file")
    info.add_argument("path", nargs="?", help="a volume or a .safetensors weights file")

    rec = sub.add_parser(
        "reconstruct",
        help="reconstruct an isotropic volume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reconstruct the isotropic volume of IN and write it to OUT.\n\n"
        "OUT ending in .zarr is written as a chunked OME-Zarr pyramid with the new voxel size, one\n"
        "chunk per dask task: on local threads by default, on a LocalCluster with --workers N, or on\n"
        "a running dask.distributed cluster with --scheduler ADDRESS (workers must see IN and OUT).\n"
        "It is written to OUT.partial and renamed when complete; if a run is killed, running the\n"
        "same command again writes only the missing chunks. .tif and .npy are written whole (small\n"
        "volumes). OUT is never overwritten unless --overwrite is given.",
    )
    rec.add_argument("input", help="anisotropic volume (TIFF, zarr, OME-Zarr, .npy), axes ZYX")
    rec.add_argument("output", help="where to write (.zarr / .ome.zarr, .tif, .npy)")
    rec.add_argument("--alpha", type=float, help="anisotropy z/xy; default: from the file's voxel size")
    rec.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="output voxel size in xy voxels: 1 = isotropic at full xy resolution, 2 = half as fine, "
        f"0.5 = twice as fine; from {SCALE_RANGE[0]:g} to {SCALE_RANGE[1]:g} (default 1)",
    )
    rec.add_argument(
        "--orientation",
        choices=ORIENTATIONS,
        default="both",
        help="reconstruct from xz slices, yz slices, or average both (auto: xz) (default: both)",
    )
    rec.add_argument(
        "--weights", help="weights name (see `niiv info`) or .safetensors path; default: the shipped model"
    )
    rec.add_argument(
        "--region", help="only this part of the input, in input voxels: z0:z1,y0:y1,x0:x1 (e.g. 0:16,0:512,0:512)"
    )
    rec.add_argument(
        "--chunks",
        default="64,256,256",
        help="output chunk size z,y,x (default 64,256,256): one task each, memory per task grows with it",
    )
    rec.add_argument(
        "--levels", type=int, help="pyramid levels, each half the size of the one before (default: down to 256 px)"
    )
    rec.add_argument(
        "--ngff",
        choices=("0.5", "0.4"),
        default="0.5",
        help="OME-Zarr version: 0.5 (zarr v3, current readers) or 0.4 (zarr v2, older readers) (default 0.5)",
    )
    rec.add_argument("--scheduler", metavar="ADDRESS", help="run on this dask.distributed scheduler (tcp://host:8786)")
    rec.add_argument("--workers", type=int, help="start a local dask.distributed cluster of N worker processes")
    rec.add_argument(
        "--threads", type=int, default=1, help="without a cluster: chunks computed at once on local threads (default 1)"
    )
    rec.add_argument(
        "--restart", action="store_true", help="discard an unfinished run's OUT.partial instead of resuming it"
    )
    rec.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _add_common(rec)
    _add_speed(rec)

    tr = sub.add_parser(
        "train",
        help="train or fine-tune weights on your volumes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Self-supervised training: xy crops of the volumes are pooled by alpha along one axis and\n"
        "the network learns to restore them. No isotropic ground truth is needed. A checkpoint is\n"
        "written beside OUT as it goes; rerun with --resume to continue after a stop.",
    )
    tr.add_argument("volumes", nargs="+", help="training volumes (their xy planes are used)")
    tr.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    tr.add_argument("--alpha", type=float, required=True, help="anisotropy to train for (z voxel size / xy voxel size)")
    tr.add_argument(
        "--arch",
        choices=ARCHITECTURES,
        default=ARCHITECTURES[0],
        help="v2: attention (paper 2025, default); v1: no attention (2024)",
    )
    tr.add_argument("--init", help="start from these weights (fine-tuning) instead of random")
    tr.add_argument("--steps", type=int, default=5000, help="training steps (default 5000)")
    tr.add_argument("--minutes", type=float, help="stop after this many minutes (the schedule adapts)")
    tr.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    tr.add_argument("--batch", type=int, default=8, help="crops per step (default 8)")
    tr.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same run")
    tr.add_argument("--held-out", help="an isotropic volume to check progress against bilinear (never trained on)")
    tr.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    tr.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _add_common(tr)

    ev = sub.add_parser(
        "evaluate",
        help="score niiv against interpolation on isotropic volumes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Simulate anisotropy on isotropic volumes (average-pool by alpha along z), reconstruct the\n"
        "xz slices back to full z resolution and compare with the original (paper, section 5):\n"
        "Fourier-clipped PSNR, PSNR and SSIM per slice, averaged, and seconds per volume.",
    )
    ev.add_argument("volumes", nargs="+", help="isotropic volumes (ground truth)")
    ev.add_argument("--alpha", type=float, default=8.0, help="anisotropy to simulate (default 8)")
    ev.add_argument("--region", help="only this part of each volume: z0:z1,y0:y1,x0:x1")
    ev.add_argument(
        "--cube", type=int, default=128, help="cut the region into cubes of this size (default 128, as the paper)"
    )
    ev.add_argument(
        "--weights", action="append", default=[], help="niiv weights to score (repeatable); default: the shipped model"
    )
    ev.add_argument("--slices", choices=("xz", "yz"), default="xz", help="which slices to score (default xz)")
    ev.add_argument(
        "--both",
        action="store_true",
        help="also score niiv reconstructed from xz and yz slices averaged (rows marked '+yz')",
    )
    ev.add_argument(
        "--cutoff", type=float, default=25.0, help="CF-PSNR cutoff radius in DFT bins at 128x128 (default 25)"
    )
    ev.add_argument("--json", help="also write the scores to this JSON file")
    _add_common(ev)
    _add_speed(ev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"info": cmd_info, "reconstruct": cmd_reconstruct, "train": cmd_train, "evaluate": cmd_evaluate}[
            args.command
        ](args)
    except NiivInputError as exc:
        print(f"niiv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"niiv {args.command}: interrupted", file=sys.stderr)
        return 130


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .data.io import describe, open_volume
    from .inference.devices import cpu_has_bf16, pick_device
    from .inference.weights import available_weights, load_weights

    if args.path:
        p = Path(args.path)
        if p.suffix == ".safetensors":
            w = load_weights(p)
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
            vol = open_volume(p)
            print(describe(vol))
            print(
                f"anisotropy alpha = {vol.alpha:g}"
                + ("  (the file gives no voxel sizes: pass --alpha)" if not vol.has_voxel_size else "")
            )
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
            ho = (w.card.get("test") or {}).get("niiv") or {}
            extra = f", test CF-PSNR {ho['cf_psnr']:.2f} dB" if "cf_psnr" in ho else ""
            print(f"  {name}: alpha {w.alpha:g}, {w.card.get('architecture', '?')}{extra}  ({path})")
        except NiivInputError as exc:
            print(f"  {name}: unusable ({exc})")
    return 0


OUTPUT_FORMATS = (".zarr", ".tif", ".tiff", ".npy")


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .data.io import open_volume
    from .data.normalise import fit_normalisation
    from .inference.geometry import output_geometry
    from .inference.reconstructor import BlockReconstruction, assemble, check_reconstructable
    from .inference.store import check_output_path
    from .inference.weights import load_weights, resolve_weights

    src, out = Path(args.input), Path(args.output)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise NiivInputError(f"{out}: unknown output format; use .zarr / .ome.zarr, .tif or .npy")
    if out.suffix.lower() != ".zarr" and (args.scheduler or args.workers or args.threads != 1):
        raise NiivInputError(
            "--scheduler, --workers and --threads need a .zarr output; .tif and .npy are written whole"
        )
    check_output_path(out, args.overwrite, src)
    chunks = _parse_chunks(args.chunks)
    vol = open_volume(src)
    if args.alpha is None and not vol.has_voxel_size:
        raise NiivInputError(
            f"{src} gives no voxel sizes, so its anisotropy is unknown: pass --alpha (z voxel size / xy voxel size)"
        )
    settings = InferenceSettings(
        alpha=args.alpha if args.alpha is not None else vol.alpha,
        scale=args.scale,
        orientation=args.orientation,
        device=args.device,
        precision=args.precision,
        compiled=args.compile,
    )
    settings.resolved()  # a missing GPU is reported here, not by every worker
    norm = fit_normalisation(vol.data)  # also rejects NaNs before any model work
    weights = resolve_weights(args.weights)
    model = load_weights(weights).model
    check_reconstructable(vol.shape, model, settings.volume_orientation)
    geometry = output_geometry(
        vol.shape,
        settings.alpha,
        settings.scale,
        vol.voxel_size if vol.has_voxel_size else None,
        vol.translation,
        vol.unit,
        _parse_region(args.region),
    )
    dtype = np.dtype(vol.data.dtype) if np.dtype(vol.data.dtype).kind in "ui" else np.dtype(np.float32)
    job = BlockReconstruction(src.resolve(), norm, model, settings, geometry, dtype)
    print(
        f"{src.name}: {vol.shape} alpha {settings.alpha:g} -> {geometry.size} "
        f"({settings.volume_orientation}, scale {settings.scale:g})",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    if out.suffix.lower() != ".zarr":
        _write_array(out, assemble(job, chunks), geometry.voxel_size, geometry.unit)
        print(f"wrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return 0
    _write_pyramid(args, out, job, chunks, (norm.low, norm.high))
    return 0


def _write_pyramid(args: argparse.Namespace, out: Path, job: Any, chunks: tuple[int, int, int], window: Any) -> None:
    """The OME-Zarr path of `niiv reconstruct`: resumable, on the runner the options ask for."""
    import shutil

    from tqdm.auto import tqdm

    from .inference.export import write_isotropic
    from .inference.geometry import pyramid_shapes
    from .inference.runners import open_runner
    from .inference.store import partial_path

    partial = partial_path(out)
    if args.restart and partial.exists():
        shutil.rmtree(partial)
    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # the first call says what an earlier run already wrote
            bar = tqdm(total=total, initial=done, desc="reconstructing", unit="vox", unit_scale=True, smoothing=0.1)
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
                ngff=args.ngff,
                contrast=window,
                runner=runner,
                resume=True,
                overwrite=args.overwrite,
                input_id=str(Path(args.input).resolve()),
                on_progress=progress,
            )
    except BaseException:
        if bar is not None:
            bar.close()
        if partial.exists():
            print(
                f"niiv reconstruct: stopped; the chunks written so far are in {partial}: run the same command "
                "again to write only the missing ones (or pass --restart to begin anew)",
                file=sys.stderr,
            )
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


def _parse_chunks(text: str) -> tuple[int, int, int]:
    try:
        chunks = tuple(int(c) for c in text.split(","))
    except ValueError:
        chunks = ()
    if len(chunks) != 3 or min(chunks) <= 0:
        raise NiivInputError(f"--chunks {text!r}: give three positive sizes z,y,x")
    return chunks  # type: ignore[return-value]


def _write_array(out: Path, result: np.ndarray, voxel: tuple[float, float, float], unit: str | None) -> None:
    """Whole-array outputs (.tif with ImageJ voxel sizes, .npy), written atomically."""
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

    atomic_write(out, write)


def cmd_train(args: argparse.Namespace) -> int:
    from .data.degrade import check_alpha
    from .data.io import open_volume
    from .training.train import HeldOutCheck, TrainSettings, train

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise NiivInputError(f"--out {out}: weights are written as .safetensors; give a name ending in .safetensors")
    if out.exists() and not (args.overwrite or args.resume):
        raise NiivInputError(f"{out} already exists; choose another --out, --resume, or pass --overwrite")
    alpha = check_alpha(args.alpha)
    vols = [open_volume(v) for v in args.volumes]
    held = None
    if args.held_out:
        held = HeldOutCheck([np.asarray(open_volume(args.held_out).data)], alpha)
    settings = TrainSettings(
        alpha=alpha,
        architecture=args.arch,
        steps=args.steps,
        lr=args.lr,
        batch=args.batch,
        seed=args.seed,
        device=args.device,
        time_budget=args.minutes * 60 if args.minutes else None,
    )
    result = train(vols, settings, out, init=args.init, resume=args.resume, held_out=held)
    msg = f"wrote {result.weights} after {result.steps_done} steps in {result.seconds / 60:.1f} min"
    if result.held_out:
        ho = result.held_out
        msg += f"; held-out CF-PSNR {ho['cf_psnr']:.2f} dB ({ho['cf_psnr_gain']:+.2f} vs bilinear)"
    print(msg, file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.degrade import check_alpha
    from .data.io import open_volume
    from .inference.weights import load_weights, resolve_weights
    from .training.evaluate import cut_cubes, evaluate, format_table, interpolation, niiv_method

    alpha = check_alpha(args.alpha)
    region = _parse_region(args.region)
    cubes = []
    for path in args.volumes:
        vol = open_volume(path)
        data = vol.data[region] if region else vol.data
        cubes += cut_cubes(np.asarray(data), args.cube)
    settings = InferenceSettings(
        alpha=alpha, orientation=args.slices, device=args.device, precision=args.precision, compiled=args.compile
    ).resolved()
    methods = {m: interpolation(m) for m in ("nearest", "bilinear", "bicubic")}
    for spec in args.weights or [None]:
        w = load_weights(resolve_weights(spec))
        name = w.card.get("name") or (Path(w.path).stem if w.path else "niiv")
        methods[name] = niiv_method(w.model, settings)
        if args.both:
            methods[name + " +yz"] = niiv_method(w.model, settings.replace(orientation="both"))
    print(f"{len(cubes)} volume(s) of {args.cube}^3, alpha {alpha:g}, {args.slices} slices", file=sys.stderr)
    scores = evaluate(cubes, alpha, methods, args.cutoff, args.slices)
    print(format_table(scores, args.cutoff))
    if args.json:
        Path(args.json).write_text(json.dumps([s.__dict__ for s in scores], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
