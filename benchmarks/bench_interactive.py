"""The interactive paths against their limits on this machine, in one run on real data.

The limit of a path is the model's arithmetic for exactly what the path must compute, over the
torch matmul peak measured in this run at the precision the engine uses (bf16 where the CPU has
it): ``(encoded input pixels x encoder FLOPs per pixel + decoded points x FLOPs per point) / peak``.
FLOPs are counted from the model's layers (:func:`napari_niiv.model.flops.model_flops`): every encoder conv and the
attention's key/value projection per input pixel; the attention query, the two attention products
and every decoder MLP layer per output point (gathers, interpolation, padding and copies count zero).
The input pixels a view must encode are, per decoded plane, the input rows and columns within the
reconstructor's halo (receptive radius + 2) of its output coordinates, clipped to the volume.

Paths (the shipped default weights, ``niiv-em``; ``--quick`` uses smaller views: a 960x540
canvas, a 64x64 xy view, a 128^3 save, one repeat, one median of 3 per peak measurement):

- ``live_xz_first`` / ``live_xz_full``: the live xz view of a 1920x1080 canvas at screen resolution,
  as the live view renders it on a CPU: ``niiv-fast`` at full resolution first (its limit counts
  niiv-fast's FLOPs), then the default model (``ViewRenderer.render``, cold latent cache each
  time); without a shipped niiv-fast, first = the default model's 1/4-resolution frame. On real
  FIB-SEM (``medulla_a``) pooled by 8 along z and mirrored to the canvas' width;
- ``next_plane``: the same view after one step of the slider to the next y, once the view is done
  and its neighbours prefetched (``ViewRenderer.prefetch``, as the live view does when idle): its
  limit is the decoder alone;
- ``xy_between_planes``: an xy view 512x512 px between two acquired planes of ``cremi_a``
  (serial-section EM, alpha 10, opened with ``data.io.open_volume``, i.e. a dask array), output
  scale 320/512 so that the 320 px wide crop fills 512 output pixels; ``_first`` is niiv-fast's
  image of it, which the live view shows first on a CPU (its limit counts niiv-fast's FLOPs);
  ``_progressive`` the same view as the live view renders it without niiv-fast (a GPU, or
  niiv-fast switched off in the widget): a 1/4-resolution pass first, then full, same limit;
- ``lazy_canvas``: the lazy layer's niiv tiles (``LazyIsotropic``, 256^2 each) covering a 1920x1080
  xz region of level 0, computed as its worker does (the tiles of one plane encoded together);
- ``save_256``: ``inference.export.write_isotropic`` of a 256^3 output (OME-Zarr pyramid) from
  ``medulla_a`` pooled by 8, as the widget's background save runs it;
- ``switch_3d`` (in the real viewer, below): from ``viewer.dims.ndisplay = 3`` to the lazy layer's
  coarsest level rendered (niiv-fast on a CPU), cold: nothing rendered ahead; its limit is that
  model's FLOPs for the level. ``gui.switch_3d.blocking_s`` is how long the switch held the GUI
  thread; ``gl_cpu_s`` the CPU seconds napari's software OpenGL threads (Mesa llvmpipe: this
  machine has no GPU) used meanwhile, on the same cores as the model, and ``napari_alone_gl_cpu_s``
  theirs for napari's own switch of the input layer alone;
  ``gui.switch_3d.prefetched_s`` the same switch as a user gets it once the layer has been
  idle for a few seconds (the overview rendered ahead, ``LazyIsotropic.prefetch_3d``).

``fast_model``: niiv-fast's FLOPs per output pixel at alpha 8 over v2's (``flop_ratio``) and the
fraction of v2's held-out CF-PSNR gain over bilinear it keeps (``gain_fraction``; alpha 8, thick,
xz, 128^3 cubes of medulla_b z 122-250: 1 with ``--quick``, 4 without).

``gui_ms``: the plugin's GUI-thread handler times (``_napari.gui_timing.HANDLER_TIMES``: median
and max over every call) in a real napari viewer (a child process, under ``xvfb-run`` when there is
no display): the dock's live view of the same xz view started, panned, stepped twice, then the
whole-volume layer added, the switch to 3D, and a fine-tuning run of niiv-fast for 9 s from the
dock's panel (``gui.fine_tune``: its steps and final status). ``gui.gui_ms.by_handler`` names each handler;
``max_plugin`` is the max without the handlers that only hand napari a new layer
(``gui_timing.NAPARI_WORK``: napari building its visual and controls, once per layer), and
``gui.napari_insert_ms`` what napari alone takes to insert a layer in the same viewer, before the
plugin is docked (an 8x8 image inserted with the selection kept, as the plugin inserts its layers;
median of 3): what a handler that adds a layer pays for napari's visual and controls.

Other jobs may share the CPU: the load average is printed and recorded.

Run: ``python benchmarks/bench_interactive.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import napari_niiv  # noqa: F401  first, as in the plugin and the CLI: it sets torch's OpenMP wait policy

# isort: split
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import DATA, data_file, report_path, run
from napari_niiv.data.degrade import pool_axis
from napari_niiv.data.io import open_volume
from napari_niiv.data.normalise import fit_normalisation
from napari_niiv.inference.devices import autocast_dtype
from napari_niiv.inference.geometry import output_geometry, pixel_range
from napari_niiv.inference.reconstructor import BlockReconstruction, Reconstructor
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.inference.viewport import ViewGrid
from napari_niiv.inference.views import COARSE_FACTOR, ViewRenderer, coarse_grid
from napari_niiv.inference.weights import (
    DEFAULT_WEIGHTS,
    FAST_WEIGHTS,
    available_weights,
    load_weights,
    resolve_weights,
)
from napari_niiv.model import NiivModel
from napari_niiv.model.flops import model_flops, per_output_pixel

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


def engine_dtype(settings: InferenceSettings) -> torch.dtype:
    """The dtype the engine computes in for resolved ``settings`` (the peak's precision)."""
    return autocast_dtype(torch.device(settings.device), settings.precision) or torch.float32


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

    def __init__(self, model: NiivModel, dtype: torch.dtype, quick: bool = False) -> None:
        self.flops = model_flops(model)
        self.dtype = dtype
        # --quick: one median of 3 (on a CPU without bf16, ~100 GFLOP/s, the best of two medians
        # of 5 takes 17 s, five times a run)
        self.medians, self.repeats = (1, 3) if quick else (2, 5)
        self.peaks: list[float] = []
        self.remeasure()

    def seconds_for(self, flops: dict[str, float], pixels: int, points: int) -> float:
        """The limit of the same work done by another model (``model_flops`` of it), at this peak."""
        return (pixels * flops["encoder_per_pixel"] + points * flops["decoder_per_point"]) / self.peak

    def remeasure(self) -> float:
        """The peak now: the better of two medians (a momentary dip would make every limit of the
        next path too lax, and its ratio look better than it is)."""
        self.peaks.append(max(matmul_peak(self.dtype, repeats=self.repeats) for _ in range(self.medians)))
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


def live_volume(height: int, width: int) -> np.ndarray:
    """The pooled volume whose xz view at ``ALPHA`` fills a ``height`` x ``width`` canvas (64 planes of y)."""
    return pooled_medulla(int(np.ceil(height / ALPHA)) + 1, 64, width)


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


def live_paths(
    model: NiivModel,
    fast: NiivModel | None,
    settings: InferenceSettings,
    limits: Limits,
    size: tuple[int, int],
    repeats: int,
):
    """The live xz view as the live view renders it on a CPU: niiv-fast's full-resolution frame
    first (without niiv-fast: the default model's 1/4-resolution frame), then the default model
    at full resolution; and the step to the next plane after the prefetch."""
    height, width = size
    vol = live_volume(height, width)
    rec = Reconstructor(model, settings)
    norm = fit_normalisation(vol)
    grid = xz_grid(height, width, 32.0)
    pixels, points = view_work(grid, vol.shape, rec)
    out = {}
    if fast is not None:
        fast_rec = Reconstructor(fast, settings)
        first = timed(lambda: ViewRenderer(vol, norm, fast_rec).render(grid), repeats)  # cold cache each time
        fast_pixels, _ = view_work(grid, vol.shape, fast_rec)
        out["live_xz_first"] = (first, limits.seconds_for(model_flops(fast), fast_pixels, points))
        full = timed(lambda: ViewRenderer(vol, norm, rec).render(grid), repeats)
        out["live_xz_full"] = (full, limits.seconds(pixels, points))
    else:
        firsts, fulls = [], []
        for _ in range(repeats):
            renderer = ViewRenderer(vol, norm, rec)  # cold latent cache each time
            stamps: dict[str, float] = {}
            t0 = time.perf_counter()
            renderer.render(grid, coarse=lambda image, s=stamps, t=t0: s.setdefault("coarse", time.perf_counter() - t))
            fulls.append(time.perf_counter() - t0)
            firsts.append(stamps["coarse"])
        _, small_points = view_work(coarse_grid(grid, COARSE_FACTOR), vol.shape, rec)
        out["live_xz_first"] = (statistics.median(firsts), limits.seconds(pixels, small_points))
        out["live_xz_full"] = (statistics.median(fulls), limits.seconds(pixels, points))
    # the step to the next plane: the view at y is done and its neighbours prefetched, as the
    # live view does when idle; the step then only decodes
    steps, prefetched = [], []
    for _ in range(repeats):
        renderer = ViewRenderer(vol, norm, rec)
        renderer.render(grid)
        prefetched.append(renderer.prefetch(grid, 1.0))
        nxt = xz_grid(height, width, 33.0)
        misses = renderer.cache.misses
        t0 = time.perf_counter()
        renderer.render(nxt)
        steps.append(time.perf_counter() - t0)
        assert renderer.cache.misses == misses, "the next plane was not prefetched"
    out["next_plane"] = (statistics.median(steps), limits.seconds(0, points))
    return out


def xy_path(
    model: NiivModel, fast: NiivModel | None, settings: InferenceSettings, limits: Limits, n: int, repeats: int
):
    vol = open_volume(DATA / "anisotropic_em" / "cremi_a.tif")  # a dask array, as the reader gives napari
    shape = tuple(int(s) for s in vol.shape)
    xy_settings = settings.replace(alpha=10.0, scale=shape[1] / n)
    rec = Reconstructor(model, xy_settings)
    norm = fit_normalisation(vol.data)
    grid = xy_grid(n, 15.85, shape)  # between acquired planes 15 and 16
    preview = timed(lambda: ViewRenderer(vol.data, norm, rec).preview(grid), 3)
    seconds = timed(lambda: ViewRenderer(vol.data, norm, rec).render(grid), repeats)
    limit = limits.seconds(*view_work(grid, shape, rec))
    out = {"xy_between_planes": (seconds, limit)}
    if fast is not None:  # what the live view shows first on a CPU: niiv-fast's image of the view
        fast_rec = Reconstructor(fast, xy_settings)
        first = timed(lambda: ViewRenderer(vol.data, norm, fast_rec).render(grid), repeats)
        fast_limit = limits.seconds_for(model_flops(fast), *view_work(grid, shape, fast_rec))
        out["xy_between_planes_first"] = (first, fast_limit)
    # without niiv-fast (a GPU, or niiv-fast switched off): the 1/4-resolution pass first, then the full one
    live = timed(lambda: ViewRenderer(vol.data, norm, rec).render(grid, coarse=lambda image: None), repeats)
    out["xy_between_planes_progressive"] = (live, limit)
    return out, preview


def lazy_path(model: NiivModel, settings: InferenceSettings, limits: Limits, size: tuple[int, int]):
    from napari_niiv.inference.lazy_volume import TILE, LazyIsotropic

    height, width = size
    vol = live_volume(height, width)
    rec = Reconstructor(model, settings)
    geometry = output_geometry(vol.shape, ALPHA, 1.0)
    lazy = LazyIsotropic(vol, fit_normalisation(vol), rec, geometry)
    lazy.prefetch_3d = False  # the path is the 2D tiles; the 3D overview rendered ahead is switch_3d's
    y = 32
    keys = [(0, 1, y, a, b) for a in range(-(-height // TILE)) for b in range(-(-width // TILE))]
    try:
        # as napari asks: one read of the canvas region, then the worker computes its tiles (the
        # tiles of the plane encoded together)
        t0 = time.perf_counter()
        lazy.get(0, (slice(0, height), slice(y, y + 1), slice(0, width)))
        assert lazy._worker.wait_idle(3600) and lazy.pending == 0
        seconds = time.perf_counter() - t0
        assert all(k in lazy._tiles for k in keys)
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


def fast_model_report(fast: NiivModel, settings: InferenceSettings, cubes: int) -> dict[str, float]:
    """niiv-fast against v2 (``niiv-v2-fibsem-a8``): FLOPs per output pixel at alpha 8, and the
    fraction of v2's held-out CF-PSNR gain over bilinear it keeps (alpha 8, thick sections, xz
    slices; ``cubes`` 128^3 cubes of medulla_b z 122-250, never trained on)."""
    from napari_niiv.training.evaluate import cut_cubes, evaluate, interpolation, niiv_method

    v2 = load_weights(resolve_weights("niiv-v2-fibsem-a8")).model
    held = np.asarray(open_volume(DATA / "fibsem" / "medulla_b.tif").data[122:250, :250, :250])
    chosen = cut_cubes(held, 128)[:cubes]
    methods = {
        "bilinear": interpolation("bilinear"),
        "v2": niiv_method(v2, settings),
        "fast": niiv_method(fast, settings),
    }
    scores = {s.method: s for s in evaluate(chosen, ALPHA, methods, ranges=[(0.0, 255.0)] * len(chosen))}
    gain = {k: scores[k].cf_psnr - scores["bilinear"].cf_psnr for k in ("v2", "fast")}
    return {
        "flop_ratio": round(per_output_pixel(model_flops(fast)) / per_output_pixel(model_flops(v2)), 4),
        "gain_fraction": round(gain["fast"] / gain["v2"], 3),
        "fast_gain_db": round(gain["fast"], 3),
        "v2_gain_db": round(gain["v2"], 3),
        "cubes": len(chosen),
    }


# -- the real viewer ----------------------------------------------------------------------------
def thread_cpu_seconds() -> dict[tuple[str, str], float]:
    """CPU seconds each thread of this process has used, by (thread id, name) (Linux /proc; empty
    elsewhere): how much of a path's time went to software OpenGL's threads (Mesa llvmpipe)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[str, str], float] = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        out[(tid, name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def gl_cpu_since(before: dict[tuple[str, str], float]) -> float:
    """CPU seconds the software OpenGL threads (llvmpipe) used since ``before``."""
    now = thread_cpu_seconds()
    return sum(v - before.get(k, 0.0) for k, v in now.items() if k[1].startswith("llvmpipe"))


def pump(app, seconds: float) -> None:
    """Run Qt's events for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.002)


def napari_insert_ms(viewer, app, repeats: int = 3) -> list[float]:
    """napari alone inserting a layer, before the plugin is docked (none of its handlers run): an
    8x8 image inserted as the plugin's ``insert_layer`` does, the selection kept (its events held),
    then removed; milliseconds of each insertion."""
    import napari

    pump(app, 0.5)
    times = []
    for i in range(repeats):
        tiny = napari.layers.Image(np.zeros((8, 8), np.float32), name=f"napari insert {i}", contrast_limits=(0, 1))
        selection = viewer.layers.selection
        active = selection.active
        t0 = time.perf_counter()
        with selection.events.blocker_all():
            viewer.layers.append(tiny)
            selection.active = active
        times.append((time.perf_counter() - t0) * 1000)
        pump(app, 0.5)
        viewer.layers.remove(tiny)
        pump(app, 0.5)
    return times


def gui_session(canvas: tuple[int, int], pans: int) -> dict[str, object]:
    """In napari (this process, a display needed): the niiv dock widget's live view of an xz view
    filling ``canvas`` (h, w), started, panned ``pans`` times, stepped to the next plane twice,
    a setting changed twice while it computes; then a whole-volume layer, the switch to 3D and a
    short fine-tuning run (:func:`fine_tune_briefly`). Returns the plugin's GUI-thread handler
    times (``gui_timing.HANDLER_TIMES``), the live view's timings and the 3D switch's blocking time."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_niiv._napari.gui_timing import HANDLER_TIMES

    height, width = canvas
    vol = pooled_medulla(int(np.ceil(height / ALPHA)) + 4, 64, width)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(width + 700, height + 260)
    viewer.add_image(vol, name="medulla", scale=(ALPHA, 1, 1))
    inserts = napari_insert_ms(viewer, app)
    _, widget = viewer.window.add_plugin_dock_widget("napari-niiv", "niiv isotropic view")
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, 32)
    viewer.reset_view()
    viewer.scene.camera.zoom = 1.0

    def wait(cond: Callable[[], bool], timeout: float = 600) -> None:
        end = time.perf_counter() + timeout
        while not cond():
            if time.perf_counter() > end:
                raise TimeoutError("the live view did not finish in time")
            app.processEvents()
            time.sleep(0.002)

    pump(app, 1.0)
    # napari alone: the CPU its software OpenGL spends on the same switch with only the input layer
    before = thread_cpu_seconds()
    viewer.dims.ndisplay = 3
    pump(app, 6.0)
    napari_alone = gl_cpu_since(before)
    viewer.dims.ndisplay = 2
    pump(app, 2.0)
    HANDLER_TIMES.clear()
    widget.live_check.value = True

    def finished(n: int) -> Callable[[], bool]:
        live = widget.live_view
        return lambda: live is not None and len(live.timings) >= n and "prefetched" in live.timings[-1]

    wait(finished(1))
    changes = 1
    for _ in range(pans):
        center = list(viewer.scene.camera.center)
        center[2] += 40
        viewer.scene.camera.center = center
        changes += 1
        wait(finished(changes))
    for y in (33, 34):
        viewer.dims.set_point(1, y)
        changes += 1
        wait(finished(changes))
    live_timings = list(widget.live_view.timings)
    # a setting changed twice while the live view computes: each change replaces the live view
    # (its handler must not wait for the old view's thread)
    precision = widget.precision_choice.value
    for value in ("fp32", precision):
        viewer.dims.set_point(1, 35 if value == "fp32" else 36)
        pump(app, 0.5)
        widget.precision_choice.value = value
    wait(finished(1))
    widget.live_check.value = False
    widget.reconstruct_button.native.click()
    wait(lambda: widget.preparing == 0 and any(la.name.endswith("isotropic (niiv)") for la in viewer.layers))
    lazy = next(la for la in viewer.layers if la.name.endswith("isotropic (niiv)")).data[0].volume
    pump(app, 1.0)
    # as a user gets it: the 2D tiles of the view done, the layer idle, so the 3D overview was
    # rendered ahead (LazyIsotropic.prefetch_3d)
    wait(lambda: not lazy._worker.busy)
    t0 = time.perf_counter()
    viewer.dims.ndisplay = 3
    wait(lambda: bool(lazy._volumes))
    prefetched = time.perf_counter() - t0
    pump(app, 1.0)
    viewer.dims.ndisplay = 2
    pump(app, 1.0)
    # cold, the measured path: nothing rendered ahead, from the switch to the coarsest level
    # rendered on the worker (niiv-fast on a CPU)
    lazy.prefetch_3d = False
    wait(lambda: not lazy._worker.busy)
    with lazy._lock:
        lazy._volumes.clear()
    before = thread_cpu_seconds()
    t0 = time.perf_counter()
    viewer.dims.ndisplay = 3
    blocking = time.perf_counter() - t0
    wait(lambda: bool(lazy._volumes))
    shown = time.perf_counter() - t0
    gl_cpu = gl_cpu_since(before)
    pump(app, 1.0)
    level, bounds = next(iter(lazy._volumes))
    coords = lazy.coords(level, tuple(slice(a, b) for a, b in bounds))
    renderer = lazy.fast_renderer or lazy.renderer
    pixels, points = view_work(ViewGrid(coords, 1, 0.0, (0, 0, 0), (1, 1, 1)), lazy.in_shape, renderer.rec)  # type: ignore[arg-type]
    flops = model_flops(renderer.rec.model)
    settings = renderer.rec.settings.resolved()
    peak = matmul_peak(engine_dtype(settings)) * 1e9
    limit = (pixels * flops["encoder_per_pixel"] + points * flops["decoder_per_point"]) / peak
    training = fine_tune_briefly(viewer, widget, app, wait)
    summary = HANDLER_TIMES.summary()
    canvas_size = [int(v) for v in viewer.canvas.size]
    viewer.close()
    return {
        "gui_ms": summary,
        "fine_tune": training,
        "napari_insert_ms": round(statistics.median(inserts), 1),
        "live_timings": live_timings,
        "switch_3d": {
            "seconds": round(shown, 3),
            "limit_s": round(limit, 3),
            "blocking_s": round(blocking, 4),
            "prefetched_s": round(prefetched, 3),
            "gl_cpu_s": round(gl_cpu, 3),
            "napari_alone_gl_cpu_s": round(napari_alone, 3),
            "level_shape": [int(c.size) for c in coords],
            "model": "niiv-fast" if lazy.fast_renderer is not None else "full",
            "peak_gflops": round(peak / 1e9),
        },
        "canvas": canvas_size,
    }


# The fine-tuning run the GUI session starts from the dock's panel: niiv-fast, stopped by its time limit
FINE_TUNE_MINUTES = 0.15


def fine_tune_briefly(viewer: Any, widget: Any, app: Any, wait: Callable[..., None]) -> dict[str, object]:
    """Back in 2D, a short fine-tuning run from the dock's training panel on the session's volume
    (niiv-fast, ``FINE_TUNE_MINUTES``, weights written to a temporary folder): its handlers (Start,
    each step, the held-out checks, the end) join the session's. Returns its steps and status."""
    viewer.dims.ndisplay = 2
    pump(app, 1.0)
    panel = widget.training
    with tempfile.TemporaryDirectory() as folder:
        os.environ["NIIV_WEIGHTS_DIR"] = folder
        widget.weights_choice.value = "niiv-fast"
        panel.steps_spin.value, panel.minutes_spin.value = 100_000, FINE_TUNE_MINUTES
        panel.name_edit.value = panel.default_name()  # a name in the temporary folder
        panel.start_button.native.click()
        if panel.job is not None:
            wait(lambda: panel.job is None, timeout=120 + 60 * FINE_TUNE_MINUTES)
        return {"steps": len(panel.plot.losses), "status": str(panel.status_label.value)}


def run_gui_child(canvas: tuple[int, int], pans: int) -> dict[str, object] | None:
    """:func:`gui_session` in a child process, under ``xvfb-run`` when there is no display."""
    cmd = [sys.executable, __file__, "--gui-child", f"{canvas[0]}x{canvas[1]}:{pans}"]
    if not os.environ.get("DISPLAY"):
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 3000x2000x24", *cmd]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"GUI session failed: {exc}", flush=True)
        return None
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if run.returncode != 0 or not lines:
        print(f"GUI session failed ({run.returncode}): {run.stderr[-2000:]}", flush=True)
        return None
    return json.loads(lines[-1])


# -- report -------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller views, one repeat of the slow paths (< 3 min)")
    parser.add_argument("--json", type=report_path, help="write the results here")
    parser.add_argument("--gui-child", help=argparse.SUPPRESS)  # HxW:PANS, run by run_gui_child
    args = parser.parse_args()
    for parts in (("fibsem", "medulla_a.tif"), ("anisotropic_em", "cremi_a.tif"), ("fibsem", "medulla_b.tif")):
        data_file(*parts)  # before minutes of paths: each is needed by one of them
    if args.gui_child:
        size, pans = args.gui_child.split(":")
        h, w = (int(v) for v in size.split("x"))
        print(json.dumps(gui_session((h, w), int(pans))), flush=True)
        os._exit(0)  # the lazy layer's and Qt's threads may abort a normal interpreter exit
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    model = load_weights(resolve_weights(DEFAULT_WEIGHTS)).model
    fast_path = available_weights().get(FAST_WEIGHTS)
    fast = load_weights(fast_path).model if fast_path is not None else None
    settings = InferenceSettings(alpha=ALPHA, device="cpu").resolved()
    limits = Limits(model, engine_dtype(settings), args.quick)
    peak = limits.peaks[0]
    canvas = (540, 960) if args.quick else (1080, 1920)
    repeats = 1 if args.quick else 3
    print(
        f"matmul peak ({settings.precision}, 4096^2, median of {limits.repeats}; again before each path): "
        f"{peak:.0f} GFLOP/s"
    )
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
        done = ", ".join(f"{k} {s:.2f} s" for k, (s, _) in found.items())
        print(f"{done}  [{time.perf_counter() - t_start:.0f} s into the run]", flush=True)

    add(live_paths(model, fast, settings, limits, canvas, repeats))
    limits.remeasure()
    xy, preview = xy_path(model, fast, settings, limits, 64 if args.quick else 512, repeats)
    add(xy)
    limits.remeasure()
    lazy, n_tiles = lazy_path(model, settings, limits, canvas)
    add(lazy)
    limits.remeasure()
    add(save_path(model, settings, limits, 128 if args.quick else 256))
    fast_report = fast_model_report(fast, settings, 1 if args.quick else 4) if fast is not None else None
    if fast_report:
        print(f"{FAST_WEIGHTS}: {fast_report}  [{time.perf_counter() - t_start:.0f} s into the run]", flush=True)
    gui = run_gui_child(canvas, 1 if args.quick else 3)
    if gui:
        s3 = gui["switch_3d"]
        paths["switch_3d"] = (s3["seconds"], s3["limit_s"])
        path_peak["switch_3d"] = s3["peak_gflops"]
        g = gui["gui_ms"]
        print(
            f"GUI handlers: {g['calls']} calls, median {g['median']} ms, max {g['max']} ms ({g['slowest']}); "
            f"without napari's layer insertion: max {g['max_plugin']} ms ({g['slowest_plugin']}); "
            f"napari alone inserting an 8x8 image: {gui.get('napari_insert_ms')} ms"
        )
        print(
            f"switch to 3D: {s3['seconds']} s, while napari's software OpenGL (llvmpipe) used {s3['gl_cpu_s']} "
            f"CPU s of the 2 cores; napari switching the input alone to 3D: {s3['napari_alone_gl_cpu_s']} CPU s"
        )
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
        "fast_model": fast_report,
        "gui_ms": {k: gui["gui_ms"][k] for k in ("median", "max", "max_plugin")} if gui else None,
        "gui": gui,
        "weights": DEFAULT_WEIGHTS,
        "matmul_peak_gflops": round(peak),
        "matmul_peaks_gflops": [round(p) for p in limits.peaks],
        "precision": settings.precision,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
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
    run(main)
