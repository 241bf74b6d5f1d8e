"""The interactive paths against their limits on this machine, in one run on real data.

The limit of a path is the model's arithmetic for exactly what the path must compute, over the
torch matmul peak measured in this run at the precision the engine uses (bf16 where the CPU has
it): ``(encoded input pixels x encoder FLOPs per pixel + decoded points x FLOPs per point) / peak``.
FLOPs are counted from the model's layers (:func:`model_flops`): every encoder conv and the
attention's key/value projection per input pixel; the attention query, the two attention products
and every decoder MLP layer per output point (gathers, interpolation, padding and copies count zero).
The input pixels a view must encode are, per decoded plane, the input rows and columns within the
reconstructor's halo (receptive radius + 2) of its output coordinates, clipped to the volume.

Paths (shipped ``niiv-v2-fibsem-a8`` weights; ``--quick`` uses smaller views):

- ``live_xz_first`` / ``live_xz_full``: the live xz view of a 1920x1080 canvas at screen resolution
  (``ViewRenderer.render`` with the progressive 1/4-resolution frame; first = that frame, whose
  limit decodes 1/16 of the points but encodes the same slices), on real FIB-SEM (``medulla_a``)
  pooled by 8 along z and mirrored to the canvas' width;
- ``xy_between_planes``: an xy view 512x512 px between two acquired planes of ``cremi_a``
  (serial-section EM, alpha 10, opened with ``data.io.open_volume``, i.e. a dask array), output
  scale 320/512 so that the 320 px wide crop fills 512 output pixels; ``_progressive`` is the
  same view as the live view renders it (1/4-resolution pass first, then full), same limit;
- ``lazy_canvas``: the lazy layer's niiv tiles (``LazyIsotropic``, 256^2 each) covering a 1920x1080
  xz region of level 0, computed one after the other as its worker does;
- ``next_plane``: the live xz view after one step of the slider to the next y (the latents of the
  new plane are not cached today); its limit is the decoder alone, which is all a step needs when
  the neighbouring planes' latents have been prefetched;
- ``save_256``: ``inference.export.write_isotropic`` of a 256^3 output (OME-Zarr pyramid) from
  ``medulla_a`` pooled by 8, as the widget's background save runs it.

Not measured here: the real napari viewer (``benchmarks/bench_viewer.py`` does that under Xvfb),
GUI handler times (``gui_ms`` is null) and ``niiv-fast`` (no such model exists yet:
``fast_model`` is null). Other jobs may share the CPU: the load average is printed and recorded.

Run: ``python benchmarks/bench_interactive.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from napari_niiv.data.degrade import pool_axis
from napari_niiv.data.io import open_volume
from napari_niiv.data.normalise import fit_normalisation
from napari_niiv.inference.geometry import output_geometry, pixel_range
from napari_niiv.inference.reconstructor import BlockReconstruction, Reconstructor
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.inference.viewport import ViewGrid
from napari_niiv.inference.views import COARSE_FACTOR, ViewRenderer, coarse_grid
from napari_niiv.inference.weights import load_weights, resolve_weights
from napari_niiv.model import NiivModel

DATA = Path(os.environ.get("NIIV_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
ALPHA = 8.0


# -- limits -------------------------------------------------------------------------------------
def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Median GFLOP/s of ``repeats`` n x n matmuls in ``dtype`` (after one warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def model_flops(model: NiivModel) -> dict[str, float]:
    """FLOPs (2 x multiply-adds) per encoded input pixel and per decoded output point, from the layers."""
    enc = 0.0
    for m in model.encoder.modules():
        if isinstance(m, torch.nn.Conv2d):
            kh, kw = m.kernel_size
            enc += 2 * m.in_channels // m.groups * m.out_channels * kh * kw
    point = sum(2 * m.in_features * m.out_features for m in model.decoder.modules() if isinstance(m, torch.nn.Linear))
    att = model.attention
    if att is not None:
        enc += 2 * (att.key.in_features * att.key.out_features + att.value.in_features * att.value.out_features)
        k = (2 * att.radius + 1) ** 2
        point += 2 * att.query.in_features * att.query.out_features + 2 * 2 * k * att.dim  # q; q.k and w.v
    return {"encoder_per_pixel": enc, "decoder_per_point": point}


def view_work(grid: ViewGrid, shape: tuple[int, ...], rec: Reconstructor) -> tuple[int, int]:
    """(input pixels to encode, output points to decode) for a view grid, per orientation it uses."""
    pixels, points = 0, 0
    for orient in rec.settings.orientations(grid.kind):
        plane_axis, col_axis = (1, 2) if orient == "xz" else (2, 1)
        lo_r, hi_r = pixel_range(grid.coords[0], shape[0], rec.halo)
        lo_c, hi_c = pixel_range(grid.coords[col_axis], shape[col_axis], rec.halo)
        pixels += grid.coords[plane_axis].size * (hi_r - lo_r) * (hi_c - lo_c)
        points += grid.coords[0].size * grid.coords[1].size * grid.coords[2].size
    return pixels, points


class Limits:
    """Seconds of arithmetic at the matmul peak; :meth:`remeasure` before each path, so that a
    path's limit uses the peak of the moment it runs (other jobs may share the cores)."""

    def __init__(self, model: NiivModel, dtype: torch.dtype) -> None:
        self.flops = model_flops(model)
        self.dtype = dtype
        self.peaks: list[float] = []
        self.remeasure()

    def remeasure(self) -> float:
        self.peaks.append(matmul_peak(self.dtype))
        self.peak = self.peaks[-1] * 1e9
        return self.peaks[-1]

    def seconds(self, pixels: float, points: float) -> float:
        f = self.flops
        return (pixels * f["encoder_per_pixel"] + points * f["decoder_per_point"]) / self.peak


# -- data ---------------------------------------------------------------------------------------
def mirror(n: int, size: int) -> np.ndarray:
    i = np.arange(n) % (2 * size)
    return np.where(i < size, i, 2 * size - 1 - i)


def pooled_medulla(planes: int, height: int, width: int) -> np.ndarray:
    """Real FIB-SEM mirrored to (planes * ALPHA, height, width) and pooled by ALPHA along z: uint8."""
    iso = np.asarray(open_volume(DATA / "fibsem" / "medulla_a.tif").data)
    z = mirror(planes * int(ALPHA), iso.shape[0])
    block = iso[z][:, mirror(height, iso.shape[1])][:, :, mirror(width, iso.shape[2])]
    return pool_axis(block.astype(np.float32), ALPHA, 0).astype(np.uint8)


def xz_grid(height: int, width: int, y: float) -> ViewGrid:
    """An xz view at screen resolution: one output pixel per isotropic voxel, plane at data y."""
    coords = ((np.arange(height) + 0.5) / ALPHA, np.array([y + 0.5]), np.arange(width) + 0.5)
    return ViewGrid(coords, 1, 1.0, (0.0, y, 0.0), (1.0, 1.0, 1.0))  # type: ignore[arg-type]


def xy_grid(n: int, z: float, shape: tuple[int, int, int]) -> ViewGrid:
    """An n x n xy view over the whole (y, x) extent at continuous input z ``z``."""
    ys = (np.arange(n) + 0.5) * shape[1] / n
    xs = (np.arange(n) + 0.5) * shape[2] / n
    return ViewGrid((np.array([z]), ys, xs), 0, shape[1] / n, (z, 0.0, 0.0), (1.0, shape[1] / n, shape[2] / n))  # type: ignore[arg-type]


# -- paths --------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def live_paths(model: NiivModel, settings: InferenceSettings, limits: Limits, size: tuple[int, int], repeats: int):
    height, width = size
    vol = pooled_medulla(int(np.ceil(height / ALPHA)) + 1, 64, width)
    rec = Reconstructor(model, settings)
    norm = fit_normalisation(vol)
    grid = xz_grid(height, width, 32.0)
    firsts, fulls = [], []
    for _ in range(repeats):
        renderer = ViewRenderer(vol, norm, rec)  # cold latent cache each time
        stamps: dict[str, float] = {}
        t0 = time.perf_counter()
        renderer.render(grid, coarse=lambda image, s=stamps, t=t0: s.setdefault("coarse", time.perf_counter() - t))
        fulls.append(time.perf_counter() - t0)
        firsts.append(stamps["coarse"])
    pixels, points = view_work(grid, vol.shape, rec)
    small = coarse_grid(grid, COARSE_FACTOR)
    _, small_points = view_work(small, vol.shape, rec)
    out = {
        "live_xz_first": (statistics.median(firsts), limits.seconds(pixels, small_points)),
        "live_xz_full": (statistics.median(fulls), limits.seconds(pixels, points)),
    }
    # the step to the next plane: the view at y is cached, y + 1 is not
    steps = []
    for _ in range(repeats):
        renderer = ViewRenderer(vol, norm, rec)
        renderer.render(grid)
        nxt = xz_grid(height, width, 33.0)
        t0 = time.perf_counter()
        renderer.render(nxt)
        steps.append(time.perf_counter() - t0)
    out["next_plane"] = (statistics.median(steps), limits.seconds(0, points))
    return out


def xy_path(model: NiivModel, settings: InferenceSettings, limits: Limits, n: int, repeats: int):
    vol = open_volume(DATA / "anisotropic_em" / "cremi_a.tif")  # a dask array, as the reader gives napari
    shape = tuple(int(s) for s in vol.shape)
    rec = Reconstructor(model, settings.replace(alpha=10.0, scale=shape[1] / n))
    norm = fit_normalisation(vol.data)
    grid = xy_grid(n, 15.85, shape)  # between acquired planes 15 and 16
    preview = timed(lambda: ViewRenderer(vol.data, norm, rec).preview(grid), 3)
    seconds = timed(lambda: ViewRenderer(vol.data, norm, rec).render(grid), repeats)
    # as the live view renders it: the 1/4-resolution pass first, then the full one
    live = timed(lambda: ViewRenderer(vol.data, norm, rec).render(grid, coarse=lambda image: None), repeats)
    limit = limits.seconds(*view_work(grid, shape, rec))
    return {"xy_between_planes": (seconds, limit), "xy_between_planes_progressive": (live, limit)}, preview


def lazy_path(model: NiivModel, settings: InferenceSettings, limits: Limits, size: tuple[int, int]):
    from napari_niiv.inference.lazy_volume import TILE, LazyIsotropic

    height, width = size
    vol = pooled_medulla(int(np.ceil(height / ALPHA)) + 1, 64, width)
    rec = Reconstructor(model, settings)
    geometry = output_geometry(vol.shape, ALPHA, 1.0)
    lazy = LazyIsotropic(vol, fit_normalisation(vol), rec, geometry)
    y = 32
    keys = [(0, 1, y, a, b) for a in range(-(-height // TILE)) for b in range(-(-width // TILE))]
    try:
        t0 = time.perf_counter()
        for key in keys:
            lazy.compute_tile(key)
        seconds = time.perf_counter() - t0
    finally:
        lazy.close()
    coords = lazy.coords(0, (slice(0, height), slice(y, y + 1), slice(0, width)))
    grid = ViewGrid(coords, 1, 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return {"lazy_canvas": (seconds, limits.seconds(*view_work(grid, vol.shape, rec)))}, len(keys)


def save_path(model: NiivModel, settings: InferenceSettings, limits: Limits, n: int):
    from napari_niiv.inference.export import write_isotropic

    vol = pooled_medulla(n // int(ALPHA), n, n)
    norm = fit_normalisation(vol)
    geometry = output_geometry(vol.shape, ALPHA, 1.0)
    job = BlockReconstruction(vol, norm, model, settings, geometry, np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_isotropic(Path(tmp) / "out.ome.zarr", job, contrast=(norm.low, norm.high))
        seconds = time.perf_counter() - t0
    # every output voxel decoded once; every y plane's xz slice (all rows, all columns) encoded once
    # per orientation of a whole volume
    orients = len(settings.orientations("xz"))
    pixels = orients * geometry.shape[1] * vol.shape[0] * vol.shape[2]
    points = orients * int(np.prod(geometry.shape))
    return {f"save_{n}": (seconds, limits.seconds(pixels, points))}


# -- report -------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller views, one repeat of the slow paths (< 3 min)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    model = load_weights(resolve_weights("niiv-v2-fibsem-a8")).model
    settings = InferenceSettings(alpha=ALPHA, device="cpu").resolved()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.precision, torch.float32)
    limits = Limits(model, dtype)
    peak = limits.peaks[0]
    canvas = (540, 960) if args.quick else (1080, 1920)
    repeats = 1 if args.quick else 3
    print(f"matmul peak ({settings.precision}, 4096^2, median of 5; again before each path): {peak:.0f} GFLOP/s")
    print(
        f"model: {limits.flops['encoder_per_pixel'] / 1e6:.3f} MFLOP per encoded pixel, "
        f"{limits.flops['decoder_per_point'] / 1e6:.3f} MFLOP per decoded point",
        flush=True,
    )
    paths: dict[str, tuple[float, float]] = {}
    path_peak: dict[str, float] = {}

    def add(found: dict[str, tuple[float, float]]) -> None:
        paths.update(found)
        path_peak.update(dict.fromkeys(found, limits.peaks[-1]))
        print(", ".join(f"{k} {s:.2f} s" for k, (s, _) in found.items()), flush=True)

    add(live_paths(model, settings, limits, canvas, repeats))
    limits.remeasure()
    xy, preview = xy_path(model, settings, limits, 256 if args.quick else 512, repeats)
    add(xy)
    limits.remeasure()
    lazy, n_tiles = lazy_path(model, settings, limits, canvas)
    add(lazy)
    limits.remeasure()
    add(save_path(model, settings, limits, 128 if args.quick else 256))
    load_after = os.getloadavg()
    report = {
        "paths": {
            name: {
                "seconds": round(s, 3),
                "limit_s": round(lim, 3),
                "ratio": round(s / lim, 2),
                "peak_gflops": round(path_peak[name]),
            }
            for name, (s, lim) in paths.items()
        },
        "fast_model": None,
        "gui_ms": None,
        "matmul_peak_gflops": round(peak),
        "matmul_peaks_gflops": [round(p) for p in limits.peaks],
        "precision": settings.precision,
        "flops": limits.flops,
        "xy_preview_s": round(preview, 4),
        "lazy_tiles": n_tiles,
        "canvas": list(canvas),
        "quick": args.quick,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after],
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "total_s": round(time.perf_counter() - t_start, 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    print(f"\n{'path':<32}{'seconds':>10}{'limit s':>10}{'ratio':>8}{'peak GFLOP/s':>14}")
    for name, row in report["paths"].items():
        print(f"{name:<32}{row['seconds']:>10.2f}{row['limit_s']:>10.2f}{row['ratio']:>8.1f}{row['peak_gflops']:>14}")
    print(
        f"canvas {canvas[1]}x{canvas[0]}, xy preview {preview * 1000:.0f} ms, {n_tiles} lazy tiles, "
        f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; total {report['total_s']} s"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
