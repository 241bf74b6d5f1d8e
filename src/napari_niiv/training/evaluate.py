"""Simulated-anisotropy evaluation (paper section 5): degrade isotropic volumes by alpha along z
(``thick`` pooling, as the paper, or ``thin`` / ``psf``), reconstruct xz (or yz) slices back to
full z resolution, score them against the original."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.degrade import THICK, Degradation, check_simulated_alpha
from ..data.normalise import fit_normalisation
from ..errors import NiivInputError
from ..inference import confidence
from ..inference.geometry import covered_planes, output_coords, section_coords
from ..inference.reconstructor import NormalisedView, Reconstructor, check_reconstructable, slice_width
from ..inference.settings import InferenceSettings
from ..model import NiivModel
from .metrics import slice_metrics

# A method maps a degraded volume (in eval intensity scale, [0, 1]), alpha, the ground truth's shape
# and the degradation that made the volume (which a user would know of their data; thick when not
# given) to a volume of that shape.
Method = Callable[[np.ndarray, float, tuple[int, int, int], Degradation], np.ndarray]


def intensity_range(volume: Any) -> tuple[float, float]:
    """Scale that maps a volume to [0, 1] for metrics: 0..255 for uint8 (the paper's /255), the
    volume's own min..max otherwise: a 12-bit camera in uint16 would score ~41 dB too high against
    the dtype's 65535."""
    if np.dtype(volume.dtype) == np.uint8:
        return 0.0, 255.0
    lo, hi = float(np.min(volume)), float(np.max(volume))
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise NiivInputError("the volume is constant or holds NaN/inf values: there is nothing to score")
    return lo, hi


def cube_origins(n: int, cube: int) -> list[int]:
    """Cube starts covering ``n`` voxels: evenly spread, first at 0, last flush with the end."""
    if n < cube:
        raise NiivInputError(f"the region is {n} voxels along an axis, smaller than --cube {cube}")
    count = int(np.ceil(n / cube))
    return sorted({round(v) for v in np.linspace(0, n - cube, count)})


def cut_cubes(
    data: np.ndarray,
    cube: int | tuple[int, int, int],
    axes: tuple[str, str, str] = ("z", "y", "x"),
    what: str = "the region",
) -> list[np.ndarray]:
    """The paper evaluates fixed-size cubes (128^3): cover ``data`` with as few as needed
    (``cube`` may give a size per axis). ``axes`` names the data's axes and ``what`` the data in a
    refusal, which gives the sizes in z, y, x order whatever the data's."""
    sizes = (cube, cube, cube) if isinstance(cube, int) else cube
    short = [a for n, c, a in zip(data.shape, sizes, axes, strict=True) if n < c]
    if short:
        size = dict(zip(axes, data.shape, strict=True))
        raise NiivInputError(
            f"{what} is {size['z']}x{size['y']}x{size['x']} voxels (z, y, x), smaller in "
            f"{' and '.join(sorted(short, key='zyx'.index))} than --cube {max(sizes)}: give a smaller --cube"
            + (" or a larger region" if what == "the region" else " or a larger volume")
        )
    cz, cy, cx = sizes
    return [
        data[z : z + cz, y : y + cy, x : x + cx]
        for z in cube_origins(data.shape[0], cz)
        for y in cube_origins(data.shape[1], cy)
        for x in cube_origins(data.shape[2], cx)
    ]


def lateral_planes(data: np.ndarray) -> np.ndarray:
    """``(z, y, x)`` -> ``(y, z, x)``: degrading axis 0 and scoring xz slices of the result scores the
    xy planes degraded along y. For volumes whose z is itself blurred (light microscopy), whose xz
    slices are no sharp ground truth; it is also what training sees."""
    return np.ascontiguousarray(np.asarray(data).transpose(1, 0, 2))


def simulate(iso: np.ndarray, alpha: float, degradation: Degradation = THICK) -> tuple[np.ndarray, np.ndarray]:
    """Degraded volume and the matching ground truth (the z planes the sections fully cover; plane
    ``k`` lies at section coordinate ``(k + 0.5) / alpha``, where every method is evaluated)."""
    low = degradation.apply(iso, alpha, axis=0)
    return low, np.asarray(iso[: covered_planes(low.shape[0], alpha)], dtype=np.float32)


# Cubic convolution's parameter in PyTorch's (and OpenCV's) bicubic interpolation.
CUBIC_A = -0.75


def interpolation_matrix(mode: str, n_low: int, coords: np.ndarray) -> np.ndarray:
    """(len(coords), n_low) weights of 1D ``nearest``, ``bilinear`` or ``bicubic`` interpolation of
    ``n_low`` samples (sample ``i`` centred at ``i + 0.5``) at continuous ``coords``, border-clamped
    as ``F.interpolate(align_corners=False)`` (which computes the same at a whole-number alpha)."""
    rows = np.arange(coords.size)
    w = np.zeros((coords.size, n_low), dtype=np.float64)
    if mode == "nearest":
        w[rows, np.clip(np.floor(coords).astype(int), 0, n_low - 1)] = 1.0
        return w.astype(np.float32)
    pos = coords - 0.5
    if mode == "bilinear":
        pos = np.clip(pos, 0.0, n_low - 1)
        lo = np.floor(pos).astype(int)
        t = pos - lo
        taps, weights = (lo, lo + 1), (1.0 - t, t)
    elif mode == "bicubic":
        lo = np.floor(pos).astype(int)
        t = pos - lo
        a = CUBIC_A

        def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
            return ((a + 2) * x - (a + 3)) * x * x + 1

        def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

        taps, weights = (lo - 1, lo, lo + 1, lo + 2), (far(t + 1), near(t), near(1 - t), far(2 - t))
    else:
        raise NiivInputError(f"interpolation must be nearest, bilinear or bicubic, got {mode!r}")
    for tap, weight in zip(taps, weights, strict=True):
        np.add.at(w, (rows, np.clip(tap, 0, n_low - 1)), weight)
    return w.astype(np.float32)


def interpolation(mode: str) -> Method:
    """Classical interpolation along z only (x and y are already fully sampled), at the ground
    truth's planes."""
    interpolation_matrix(mode, 1, np.zeros(0))  # an unknown mode is refused here, not per volume

    def run(low: np.ndarray, alpha: float, shape: tuple[int, int, int], degradation: Degradation = THICK) -> np.ndarray:
        m = interpolation_matrix(mode, low.shape[0], section_coords(shape[0], alpha))
        up = np.tensordot(m, np.asarray(low, dtype=np.float32), axes=(1, 0))
        return np.clip(up, 0.0, 1.0)

    return run


def niiv_method(model: NiivModel, settings: InferenceSettings | None = None) -> Method:
    """niiv with ``settings`` (default: xz slices, auto device and precision); their alpha and
    degradation are replaced by each evaluation's. It decodes exactly the ground truth's planes."""
    settings = settings or InferenceSettings(alpha=1.0, orientation="xz")

    def run(low: np.ndarray, alpha: float, shape: tuple[int, int, int], degradation: Degradation = THICK) -> np.ndarray:
        run_settings = settings.replace(alpha=alpha, degradation=str(degradation))
        check_reconstructable(low.shape, model, run_settings.volume_orientation)
        norm = fit_normalisation(low)
        coords = [section_coords(shape[0], alpha), output_coords(shape[1], shape[1]), output_coords(shape[2], shape[2])]
        orients = run_settings.orientations("xz")
        parts = Reconstructor(model, run_settings).parts_at(NormalisedView(low, norm), coords, orients)
        return norm.invert(confidence.reconstruction(parts, orients), np.float32)

    return run


@dataclass
class Score:
    method: str
    cf_psnr: float
    psnr: float
    ssim: float
    seconds_per_volume: float
    alpha: float = 8.0
    degradation: str = "thick"
    blocks: int = 1  # volumes (blocks) scored: those with a non-constant plane among the scored ones


# SSIM's 11x11 window: a scored slice needs at least this many pixels each way.
SSIM_MIN = 11
SLICES = ("xz", "yz", "xy")


def check_evaluable(
    shape: Sequence[int],
    alpha: float,
    slices: str = "xz",
    models: dict[str, NiivModel] | None = None,
    orientation: str = "xz",
    what: str = "the volume",
    fix: str = "give a larger volume",
) -> None:
    """Refuse, before any work, a ``shape`` (z, y, x; the xy planes for ``slices='xz'`` after
    :func:`lateral_planes`) that cannot be scored at ``alpha``: fewer than two sections, slices
    smaller than SSIM's window, or narrower across the decoded slices (``orientation``) than a
    model's receptive field. ``what`` names the shape and ``fix`` says what to do in the message."""
    z, y, x = (int(n) for n in shape)
    if z < 2 * alpha:
        raise NiivInputError(
            f"{what} is {z} planes deep: alpha {alpha:g} needs at least {math.ceil(2 * alpha - 1e-9)} (two "
            f"sections); {fix}"
        )
    depth = covered_planes(int(np.floor(z / alpha + 1e-9)), alpha)
    across = x if slices == "xz" else y
    if min(depth, across) < SSIM_MIN:
        raise NiivInputError(
            f"{what} gives {slices} slices of {depth}x{across} px to score; SSIM's window needs at least "
            f"{SSIM_MIN} each way: {fix}"
        )
    for name, model in (models or {}).items():
        width, need = slice_width((z, y, x), model, orientation)
        if width < need:
            raise NiivInputError(
                f"{what} is {width} px across the {orientation} slices {name} decodes, less than its receptive "
                f"field needs ({need}): {fix}"
            )


def evaluate(
    volumes: Sequence[np.ndarray],
    alpha: float,
    methods: dict[str, Method],
    cutoff: float = 25.0,
    slices: str = "xz",
    ranges: Sequence[tuple[float, float]] | None = None,
    degradation: Degradation | str = THICK,
) -> list[Score]:
    """Mean metrics over every ``slices`` plane of every volume (ZYX), per method, and time per
    volume. ``slices`` 'xz' or 'yz' score those planes of the volume degraded along z; 'xy' scores
    its xy planes degraded along y (:func:`lateral_planes`, for volumes whose z is blurred).
    ``degradation``: a :class:`Degradation` or its name ('thick', 'thin', 'psf:3'). ``ranges``
    gives each volume's intensity range (default :func:`intensity_range` of each; cubes cut from
    one volume should share that volume's). A volume whose scored slices are all constant (a blank
    block) is left out; if all are, it is refused."""
    alpha = check_simulated_alpha(alpha)
    if isinstance(degradation, str):
        degradation = Degradation.parse(degradation)
    elif not isinstance(degradation, Degradation):
        raise NiivInputError(f"degradation: give a Degradation or a name such as 'thick', got {degradation!r}")
    if slices not in SLICES:
        raise NiivInputError(f"slices must be one of {', '.join(SLICES)}, got {slices!r}")
    if not methods:
        raise NiivInputError("methods: give at least one method to score (name -> method)")
    volumes = [np.asarray(v) for v in volumes]
    if not volumes:
        raise NiivInputError("volumes: give at least one isotropic volume (ZYX) to score")
    if ranges is not None and len(ranges) != len(volumes):
        raise NiivInputError(f"ranges: give one (low, high) per volume ({len(volumes)}), got {len(ranges)}")
    for i, iso in enumerate(volumes):
        if iso.ndim != 3:
            raise NiivInputError(f"volume {i} has shape {iso.shape}: give 3D volumes (z, y, x)")
        if slices == "xy":
            volumes[i] = lateral_planes(iso)
        check_evaluable(volumes[i].shape, alpha, "xz" if slices == "xy" else slices, what=f"volume {i}")
    if slices == "xy":
        slices = "xz"
    scores = []
    sims = []
    for i, iso in enumerate(volumes):
        lo, hi = (float(v) for v in ranges[i]) if ranges is not None else intensity_range(iso)
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise NiivInputError(f"ranges[{i}] ({lo:g}, {hi:g}): give a finite low below high")
        low, gt = simulate((np.asarray(iso, dtype=np.float32) - lo) / (hi - lo), alpha, degradation)
        sims.append((low, gt))
    axis = 1 if slices == "xz" else 2
    # a blank block (a black border cut into cubes) has nothing to score: left out, as blank slices are
    sims = [(low, gt) for low, gt in sims if not blank(gt, axis)]
    if not sims:
        raise NiivInputError(
            f"every {slices} slice of the {len(volumes)} volume(s) to score is constant (blank): there is nothing to "
            "score on them; give volumes with structure"
        )
    for name, method in methods.items():
        per_volume = []
        seconds = 0.0
        for low, gt in sims:
            t0 = time.perf_counter()
            pred = method(low, alpha, gt.shape, degradation)
            seconds += time.perf_counter() - t0
            per_volume.append(slice_metrics(np.moveaxis(gt, axis, 0), np.moveaxis(pred, axis, 0), cutoff))
        mean = {k: float(np.mean([m[k] for m in per_volume])) for k in per_volume[0]}
        scores.append(
            Score(
                name,
                mean["cf_psnr"],
                mean["psnr"],
                mean["ssim"],
                seconds / len(sims),
                alpha,
                str(degradation),
                blocks=len(sims),
            )
        )
    return scores


def blank(gt: np.ndarray, axis: int = 1) -> bool:
    """Whether every slice of ``gt`` across ``axis`` is constant: :func:`slice_metrics` scores none of
    them (a block cut from a volume's blank border)."""
    planes = np.moveaxis(np.asarray(gt), axis, 0).reshape(gt.shape[axis], -1)
    return bool(np.all(planes.min(axis=1) == planes.max(axis=1)))


def format_table(scores: Sequence[Score], cutoff: float = 25.0) -> str:
    """A Table-1-style table (Markdown), with the gain of each method over bilinear and over bicubic
    (what a user would pick instead)."""
    bases = [b for b in ("bilinear", "bicubic") if any(s.method == b for s in scores)]
    head = f"| method | CF-PSNR (f_cutoff {cutoff:g}) | PSNR | SSIM | s / volume |"
    for b in bases:
        head += f" dCF-PSNR vs {b} | dPSNR vs {b} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in scores:
        row = f"| {s.method} | {s.cf_psnr:.2f} | {s.psnr:.2f} | {s.ssim:.3f} | {s.seconds_per_volume:.3f} |"
        for b in bases:
            base = next(x for x in scores if x.method == b)
            row += f" {s.cf_psnr - base.cf_psnr:+.2f} | {s.psnr - base.psnr:+.2f} |"
        lines.append(row)
    return "\n".join(lines)


def format_gains(scores: Sequence[Score], baseline: str = "bicubic") -> str:
    """One row per degradation, alpha and learned method: its gain over ``baseline`` (the summary of
    a multi-alpha evaluation)."""
    lines = [
        f"| degradation | alpha | method | dCF-PSNR vs {baseline} | dPSNR vs {baseline} |",
        "|---|---|---|---|---|",
    ]
    classical = {"nearest", "bilinear", "bicubic"}
    for s in scores:
        if s.method in classical:
            continue
        base = next(
            (b for b in scores if b.method == baseline and b.alpha == s.alpha and b.degradation == s.degradation),
            None,
        )
        if base is not None:
            lines.append(
                f"| {s.degradation} | {s.alpha:g} | {s.method} | {s.cf_psnr - base.cf_psnr:+.2f} | "
                f"{s.psnr - base.psnr:+.2f} |"
            )
    return "\n".join(lines)
