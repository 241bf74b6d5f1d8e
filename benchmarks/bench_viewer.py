"""The live niiv view in the real napari viewer: GUI-thread stalls, time to pixels, and volume-size independence.

Drives ``napari.Viewer(show=True)`` with the niiv dock widget's live view on real FIB-SEM texture
(``medulla_a.tif`` from ``$NIIV_DATA_DIR``, default ``../shared/data``) and reports, in one run:

1. GUI-thread stalls during live reconstruction: a ``QTimer`` ticking every 2 ms on the GUI thread
   records the gaps between ticks from each camera change until the niiv result is shown (max and
   99th percentile), against the same gaps with live off (idle viewer, and a pan with live off):
   the machine's and napari's own jitter, and one repaint with nothing changed (idle, and with all
   cores busy). Target: max gap < 50 ms. The worst stall is attributed three ways: wrappers timing
   the GUI-thread steps (niiv result handling, napari refresh/slicing/thumbnail, vispy data and
   texture, GL flush, Qt paintGL), an application event filter (Qt events inside the stall, which
   names C++ work no wrapper sees, e.g. composing the window), and stack samples of the GUI thread
   and the niiv worker taken while the GUI thread is late.
2. On a 1920x1080 canvas: camera change (pan) -> interpolated preview and -> niiv result (from
   ``LiveView.timings``) for an xz view of an alpha-8 volume (layer scale (8, 1, 1)) filling the
   canvas at screen resolution, shipped default weights; output megapixels and niiv ms per megapixel.
3. That this does not grow with volume size: the same view (a region inside both volumes, so the
   same work) on a 256^3 and on a 256 x 2048 x 2048 (z, y, x) lazy zarr store (uint8, chunks
   (32, 256, 256), written chunk by chunk from mirrored medulla tiles, never whole in memory):
   preview and niiv times and their ratio large/small, time to open the layer and to start live
   (normalisation sampling included), bytes read from the store, and peak RSS. Each volume runs in
   its own subprocess, so ``ru_maxrss`` is per volume (RSS is also sampled with psutil).

Run: ``.venv/bin/python benchmarks/bench_viewer.py`` (~4 minutes on a 2-core CPU, writing the stores
included; re-executes itself under ``xvfb-run`` with a 2560x1600 screen when no ``DISPLAY`` is set).
``--quick``: a 640x360 canvas, one pan, a 256 x 1536 x 1536 large store (about two minutes).
``--store-dir DIR`` keeps the stores for the next run. Results: a table on stdout and JSON in
``out/bench/viewer.json`` (``viewer-quick.json`` for ``--quick``).

Targets: GUI-thread max gap < 50 ms while live; preview well under a second; large/small ratios ~1
(nothing scales with the volume: reads, normalisation, memory).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import data_file, positive, report_path, run

REPO = Path(__file__).resolve().parents[1]
PLUGIN, WIDGET = "napari-niiv", "niiv isotropic view"
ALPHA = 8.0
CHUNKS = (32, 256, 256)
SMALL_SHAPE = (256, 256, 256)
LARGE_SHAPE = (256, 2048, 2048)
# above the 512 MiB a layer may be read into memory whole (``layer_view.IN_MEMORY_BYTES``), as the
# full run's: a large store read whole would compare memory with memory, not a lazy read
QUICK_LARGE_SHAPE = (256, 1536, 1536)
SHARED_VIEW = (135.0, 240.0)  # world units (z, x) visible in the volume-size comparison: inside 256^3
TICK_MS = 2
TARGET_STALL_MS = 50.0
XVFB_SCREEN = "-screen 0 2560x1600x24"

# ---------------------------------------------------------------------------------------------
# Stores: written chunk by chunk from mirrored real texture, so the large one is never in memory.


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Reflect indices into [0, n): tiles alternate flipped and unflipped, so texture is continuous."""
    i = np.mod(index, 2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def write_store(path: Path, shape: tuple[int, int, int], texture: np.ndarray) -> float:
    """A uint8 zarr store of ``shape`` made of mirrored ``texture``; seconds taken. Offsets per axis
    keep the 256^3 store from being the large store's corner (same statistics, different voxels)."""
    import zarr

    t0 = time.perf_counter()
    arr = zarr.create_array(store=str(path), shape=shape, chunks=CHUNKS, dtype="uint8", overwrite=True)
    n = texture.shape
    offset = (17, 53, 101) if shape == SMALL_SHAPE else (0, 0, 0)
    for z0 in range(0, shape[0], CHUNKS[0]):
        zi = _mirror(np.arange(z0, min(z0 + CHUNKS[0], shape[0])) + offset[0], n[0])
        for y0 in range(0, shape[1], CHUNKS[1]):
            yi = _mirror(np.arange(y0, min(y0 + CHUNKS[1], shape[1])) + offset[1], n[1])
            for x0 in range(0, shape[2], CHUNKS[2]):
                xi = _mirror(np.arange(x0, min(x0 + CHUNKS[2], shape[2])) + offset[2], n[2])
                arr[z0 : z0 + zi.size, y0 : y0 + yi.size, x0 : x0 + xi.size] = texture[np.ix_(zi, yi, xi)]
    return time.perf_counter() - t0


def store_ready(path: Path, shape: tuple[int, int, int]) -> bool:
    """A store from an earlier run (``--store-dir``) with the right shape and chunks is reused."""
    if not path.exists():
        return False
    import zarr

    try:
        arr = zarr.open_array(str(path), mode="r")
    except Exception:
        return False
    return tuple(arr.shape) == shape and tuple(arr.chunks) == CHUNKS and arr.nchunks_initialized == arr.nchunks


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---------------------------------------------------------------------------------------------
# Child process: one volume in one real viewer.

CALLS: list[tuple[str, float, float]] = []  # (label, start, end) of instrumented GUI-thread calls
_GUI_THREAD = threading.get_ident()


def _wrap(owner: Any, name: str, label: str | Callable[..., str]) -> None:
    """Time ``owner.name`` when it runs on the GUI thread. Installed before the viewer, the niiv
    widget and the live view exist, so signal connections made at their construction see it."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != _GUI_THREAD:
            return original(*args, **kwargs)
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            text = label(*args) if callable(label) else label
            CALLS.append((text, t0, time.perf_counter()))

    setattr(owner, name, timed)


def _layer_label(what: str) -> Callable[..., str]:
    return lambda layer, *rest: f"napari: {what} '{getattr(layer, 'name', '?')}'"


def instrument() -> dict[str, float]:
    """Wrap the GUI-thread steps a live update goes through; returns a dict the wrapped
    normalisation fills with its seconds (it runs on the worker, so it is timed separately)."""
    import napari._qt  # noqa: F401  (selects vispy's Qt backend, which must not be imported first)
    from napari.layers import Image
    from vispy.app.backends._qt import CanvasBackendDesktop
    from vispy.gloo.context import GLContext
    from vispy.scene import SceneCanvas
    from vispy.visuals.image import ImageVisual

    from napari_niiv._napari import live_view as lv
    from napari_niiv._napari.widget import NiivWidget

    _wrap(lv.LiveView, "_on_result", "niiv: result handling (LiveView._on_result)")
    _wrap(lv.LiveView, "refresh", "niiv: view grid + submit (LiveView.refresh)")
    _wrap(NiivWidget, "_start_live", "niiv: start live (load weights, LiveView)")
    _wrap(Image, "refresh", _layer_label("layer refresh"))  # on Image: every layer here is one
    _wrap(Image, "set_view_slice", _layer_label("slicing"))
    _wrap(Image, "_update_thumbnail", _layer_label("thumbnail"))
    try:
        from napari._vispy.layers.scalar_field import VispyScalarFieldBaseLayer

        _wrap(VispyScalarFieldBaseLayer, "_on_data_change", "vispy: layer data -> node (_on_data_change)")
    except ImportError:  # a napari without the class: that step is simply not broken out
        pass
    _wrap(ImageVisual, "_build_texture", "vispy: texture build (ImageVisual._build_texture)")
    _wrap(SceneCanvas, "on_draw", "vispy: scene draw (SceneCanvas.on_draw)")
    _wrap(GLContext, "flush_commands", "vispy: GL flush (texture upload + raster)")
    _wrap(CanvasBackendDesktop, "paintGL", "Qt: canvas paint (paintGL, all drawing)")

    from napari_niiv._napari import layer_view  # the live view's one read of its input (SharedRead)

    norm: dict[str, float] = {}
    fit = layer_view.fit_normalisation

    def timed_fit(data: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fit(data, *args, **kwargs)
        finally:
            norm["seconds"] = time.perf_counter() - t0

    layer_view.fit_normalisation = timed_fit
    return norm


class Ticker:
    """A 2 ms precise QTimer on the GUI thread; gaps between its ticks are GUI-thread stalls."""

    def __init__(self) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.ticks: list[float] = []
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self._timer.start()

    def gaps(self, t0: float, t1: float) -> np.ndarray:
        """Gaps (s) between ticks in [t0, t1], including the one spanning t0."""
        ticks = np.asarray(self.ticks)
        i0 = max(0, int(np.searchsorted(ticks, t0)) - 1)
        i1 = int(np.searchsorted(ticks, t1, side="right"))
        return np.diff(ticks[i0:i1])


class StallWatch(threading.Thread):
    """While the GUI thread has not ticked for over 20 ms, samples where it and the niiv worker are
    in Python every 5 ms: what the wrappers miss (uninstrumented code, the GIL held by the worker)."""

    def __init__(self, ticker: Ticker, gui_thread: int) -> None:
        super().__init__(daemon=True, name="stall-watch")
        self.ticker, self.gui_thread = ticker, gui_thread
        self.samples: list[tuple[float, str, str]] = []
        self._stop = threading.Event()

    @staticmethod
    def _where(frame: Any, depth: int = 3) -> str:
        parts = []
        while frame is not None and len(parts) < depth:
            code = frame.f_code
            parts.append(f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}")
            frame = frame.f_back
        return " < ".join(parts) or "-"

    def run(self) -> None:
        while not self._stop.wait(0.005):
            ticks = self.ticker.ticks
            if not ticks or time.perf_counter() - ticks[-1] < 0.02:
                continue
            frames = sys._current_frames()
            worker = next((t.ident for t in threading.enumerate() if t.name == "niiv-live"), None)
            self.samples.append(
                (time.perf_counter(), self._where(frames.get(self.gui_thread)), self._where(frames.get(worker)))
            )

    def during(self, a: float, b: float) -> dict[str, list[tuple[str, int]]]:
        """Most frequent GUI-thread and worker stacks sampled in (a, b)."""
        inside = [(g, w) for t, g, w in self.samples if a < t <= b]
        return {
            "gui_stacks": Counter(g for g, _ in inside).most_common(3),
            "worker_stacks": Counter(w for _, w in inside).most_common(3),
        }

    def stop(self) -> None:
        self._stop.set()


WATCH: StallWatch | None = None


def install_event_log() -> Any:
    """An application event filter logging (time, event type, receiver class) of every event the
    GUI thread dispatches. Within a stall, the time from one event to the next is what handling
    that event took: this names the Qt-side work no Python wrapper sees (window composition,
    backing-store flush), e.g. an UpdateRequest to the top-level window."""
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QApplication

    class EventLog(QObject):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[tuple[float, int, str]] = []

        def eventFilter(self, obj: Any, event: Any) -> bool:
            self.events.append((time.perf_counter(), int(event.type().value), type(obj).__name__))
            return False

        def during(self, a: float, b: float) -> list[dict[str, Any]]:
            """Events delivered in (a, b), longest first, each lasting until the next one (or b)."""
            times = [t for t, _, _ in self.events]
            i0, i1 = int(np.searchsorted(times, a)), int(np.searchsorted(times, b))
            out = []
            for i in range(i0, i1):
                t, kind, receiver = self.events[i]
                end = self.events[i + 1][0] if i + 1 < len(self.events) else b
                out.append({"event": f"{QEvent.Type(kind).name} -> {receiver}", "ms": (min(end, b) - t) * 1e3})
            return sorted(out, key=lambda e: -e["ms"])[:6]

    log = EventLog()
    QApplication.instance().installEventFilter(log)
    return log


EVENTS: Any = None


def gap_stats(gaps: np.ndarray) -> dict[str, float]:
    if gaps.size == 0:
        return {"max_ms": float("nan"), "p99_ms": float("nan"), "ticks": 0}
    return {
        "max_ms": float(gaps.max() * 1e3),
        "p99_ms": float(np.percentile(gaps, 99) * 1e3),
        "ticks": int(gaps.size),
    }


def worst_gap(ticker: Ticker, t0: float, t1: float) -> dict[str, Any]:
    """The longest gap in [t0, t1] and the instrumented GUI-thread calls overlapping it."""
    ticks = np.asarray(ticker.ticks)
    i0 = max(0, int(np.searchsorted(ticks, t0)) - 1)
    i1 = int(np.searchsorted(ticks, t1, side="right"))
    window = ticks[i0:i1]
    if window.size < 2:
        return {}
    k = int(np.argmax(np.diff(window)))
    a, b = float(window[k]), float(window[k + 1])
    inside = sorted(
        ((label, s, e) for label, s, e in CALLS if s < b and e > a), key=lambda c: c[2] - c[1], reverse=True
    )
    return {
        "gap_ms": (b - a) * 1e3,
        "at_s": a - t0,
        "calls": [{"call": label, "ms": (e - s) * 1e3} for label, s, e in inside[:8]],
        **(WATCH.during(a, b) if WATCH is not None else {}),
        "qt_events": EVENTS.during(a, b) if EVENTS is not None else [],
    }


def call_summary(t0: float, t1: float) -> dict[str, dict[str, float]]:
    """Per instrumented call in [t0, t1]: count, max and total ms (inclusive times; calls nest)."""
    out: dict[str, dict[str, float]] = {}
    for label, s, e in CALLS:
        if s >= t0 and e <= t1:
            d = out.setdefault(label, {"count": 0, "max_ms": 0.0, "total_ms": 0.0})
            d["count"] += 1
            d["max_ms"] = max(d["max_ms"], (e - s) * 1e3)
            d["total_ms"] += (e - s) * 1e3
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["max_ms"]))


class RssSampler(threading.Thread):
    """Samples this process's RSS every 20 ms (psutil), for peaks per phase."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        import psutil

        self._proc = psutil.Process()
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self._proc.memory_info().rss))
            self._stop.wait(0.02)

    def peak(self, t0: float, t1: float) -> float:
        """Peak RSS in MiB in [t0, t1]."""
        inside = [r for t, r in self.samples if t0 <= t <= t1]
        return max(inside, default=0) / 2**20

    def now(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def stop(self) -> None:
        self._stop.set()


def read_mb() -> float:
    """MiB this process has read through read() calls so far (/proc/self/io rchar): store reads."""
    import psutil

    return psutil.Process().io_counters().read_chars / 2**20


def pump(seconds: float) -> None:
    """Run the Qt event loop for ``seconds`` (a real event loop: ticks and paints go on)."""
    wait_until(lambda: False, seconds, raise_on_timeout=False)


def wait_until(cond: Callable[[], bool], timeout: float, raise_on_timeout: bool = True) -> float:
    """Run a nested Qt event loop until ``cond()`` (checked every 5 ms); returns the time it held."""
    from qtpy.QtCore import QEventLoop, QTimer

    end = time.perf_counter() + timeout
    loop = QEventLoop()
    timer = QTimer()
    timer.setInterval(5)

    def check() -> None:
        if cond() or time.perf_counter() > end:
            loop.quit()

    timer.timeout.connect(check)
    timer.start()
    if not cond():
        loop.exec()
    timer.stop()
    if raise_on_timeout and not cond():
        raise TimeoutError(f"condition not met within {timeout:.0f} s")
    return time.perf_counter()


def size_canvas(viewer: Any, width: int, height: int) -> tuple[int, int]:
    """Make the canvas exactly ``width`` x ``height`` screen pixels; returns ``viewer.canvas.size``."""
    qt_viewer = viewer.window._qt_viewer
    for dock in (qt_viewer.dockLayerList, qt_viewer.dockLayerControls):
        dock.setVisible(False)  # room for 1920 px of canvas beside the niiv dock on a 2560 px screen
    qt_viewer.canvas.native.setFixedSize(width, height)
    viewer.window._qt_window.resize(2560, 1600)
    wait_until(lambda: tuple(viewer.canvas.size) == (height, width), 10, raise_on_timeout=False)
    return tuple(int(s) for s in viewer.canvas.size)  # type: ignore[return-value]


def set_view(viewer: Any, y: float, zoom: float, z: float, x: float) -> None:
    """An xz view (z rows, x columns) of the y plane at world ``y``, centred on (z, x)."""
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, y)
    viewer.scene.camera.zoom = zoom
    viewer.scene.camera.center = (y, z, x)


def repaints_under_load(viewer: Any, ticker: Ticker, repeats: int = 8) -> dict[str, float]:
    """Repaints with nothing changed while torch matmuls keep every core busy (live off): how much
    CPU contention alone, without any niiv code on the GUI thread, stretches a frame."""
    import torch

    done = threading.Event()

    def load() -> None:
        a = torch.randn(1024, 1024)
        while not done.is_set():
            a @ a

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    pump(0.3)
    frames = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        viewer.window._qt_viewer.canvas.native.update()
        pump(0.2)
        frames.append(float(ticker.gaps(t0, time.perf_counter()).max()))
    done.set()
    thread.join()
    return {"max_gap_ms_median": float(np.median(frames) * 1e3), "max_gap_ms_max": float(np.max(frames) * 1e3)}


def run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """One volume in one viewer: open, baselines with live off, start live, camera changes."""
    import dask.array as da
    import zarr

    rss = RssSampler()
    rss.start()
    norm = instrument()
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    width, height = cfg["canvas"]
    canvas = size_canvas(viewer, width, height)
    if canvas != (height, width):
        raise RuntimeError(f"viewer.canvas.size is {canvas}, not {(height, width)}: is the screen big enough?")
    ticker = Ticker()
    global WATCH, EVENTS
    EVENTS = install_event_log()
    WATCH = StallWatch(ticker, _GUI_THREAD)
    WATCH.start()
    pump(0.5)
    out: dict[str, Any] = {"job": cfg["job"], "canvas_hw": list(canvas), "viewbox_hw": None}
    rss_before = rss.now()

    # -- open the lazy layer at the first view (napari slices it on the GUI thread)
    zoom = cfg["zoom"]
    z_start, x_centre, y_plane, dz = cfg["z_start"], cfg["x_centre"], cfg["y_plane"], cfg["pan_dz"]
    r0, t0 = read_mb(), time.perf_counter()
    t_opening = t0
    arr = da.from_zarr(zarr.open_array(cfg["store"], mode="r"))
    viewer.add_image(arr, name="em", scale=(ALPHA, 1.0, 1.0), contrast_limits=(0, 255))
    set_view(viewer, y_plane, zoom, z_start, x_centre)
    app.processEvents()
    t1 = time.perf_counter()
    out["open"] = {"seconds": t1 - t0, "read_mib": read_mb() - r0, **gap_stats(ticker.gaps(t0, t1))}
    out["open"]["worst"] = worst_gap(ticker, t0, t1)
    out["viewbox_hw"] = [float(s) for s in viewer.canvas.viewbox_size(viewer.layers)]
    pump(1.0)
    t_opened = time.perf_counter()

    # -- baselines with live off: idle, then a pan (napari's own redraw)
    t0 = time.perf_counter()
    pump(2.0)
    out["baseline_idle"] = gap_stats(ticker.gaps(t0, time.perf_counter()))
    t0 = time.perf_counter()
    viewer.scene.camera.center = (y_plane, z_start + dz, x_centre)
    pump(1.5)
    t1 = time.perf_counter()
    out["baseline_pan"] = {**gap_stats(ticker.gaps(t0, t1)), "worst": worst_gap(ticker, t0, t1)}
    # one repaint with nothing changed: the cost of a frame (vispy draw + Qt composing the window)
    frames, paints = [], []
    for _ in range(8):
        n0, t0 = len(CALLS), time.perf_counter()
        viewer.window._qt_viewer.canvas.native.update()
        pump(0.15)
        frames.append(float(ticker.gaps(t0, time.perf_counter()).max()))
        paints += [e - s for label, s, e in CALLS[n0:] if label.startswith("Qt: canvas paint")]
    out["baseline_frame"] = {
        "max_gap_ms_median": float(np.median(frames) * 1e3),
        "max_gap_ms_max": float(np.max(frames) * 1e3),
        "paintgl_ms_median": float(np.median(paints) * 1e3) if paints else float("nan"),
    }
    out["baseline_frame_loaded"] = repaints_under_load(viewer, ticker)

    # -- start live (weights load on the GUI thread; normalisation and the first view on the worker)
    if cfg["job"] == "screen":  # start on a small zoomed-in view, so the full screen is measured as a change
        set_view(viewer, y_plane, zoom * 16, z_start, x_centre)
    else:
        viewer.scene.camera.center = (y_plane, z_start, x_centre)
    pump(0.3)
    r0, t0 = read_mb(), time.perf_counter()
    widget.live_check.value = True
    toggle_s = time.perf_counter() - t0
    live = widget.live_view
    assert live is not None, widget.status_label.value
    wait_until(lambda: bool(live.timings) and "niiv" in live.timings[-1], cfg["timeout"])
    first = live.timings[-1]
    t_first = live._requested_at + first["niiv"]
    pump(0.3)
    t1 = time.perf_counter()
    out["start_live"] = {
        "toggle_gui_s": toggle_s,
        "to_preview_s": live._requested_at + first["preview"] - t0,
        "to_niiv_s": t_first - t0,
        "normalisation_s": norm.get("seconds", float("nan")),
        "read_mib": read_mb() - r0,
        **gap_stats(ticker.gaps(t0, t1)),
        "worst": worst_gap(ticker, t0, t1),
    }

    # -- camera changes: a jump to the measured view (screen job), then pans by 1/6 of the canvas
    changes: list[tuple[str, Callable[[], None]]] = []
    if cfg["job"] == "screen":
        changes.append(("jump", lambda: set_view(viewer, y_plane, zoom, z_start, x_centre)))
    for i in range(cfg["pans"]):
        z = z_start + (i + 1) * dz
        changes.append((f"pan {i + 1}", lambda z=z: setattr(viewer.scene.camera, "center", (y_plane, z, x_centre))))
    t_started = time.perf_counter()
    records = []
    for name, change in changes:
        n0 = len(live.timings)
        r0, t0 = read_mb(), time.perf_counter()
        change()
        wait_until(lambda n0=n0: len(live.timings) > n0 and "niiv" in live.timings[-1], cfg["timeout"])
        wait_until(lambda: not live.busy, cfg["timeout"])
        timing = live.timings[-1]
        t_niiv = live._requested_at + timing["niiv"]
        pump(0.3)  # the draw that shows the result
        t1 = time.perf_counter()
        image = live.output.data
        records.append(
            {
                "change": name,
                "preview_s": timing["preview"],
                "coarse_s": timing.get("coarse", float("nan")),  # progressive: niiv at 1/4 resolution
                "niiv_s": timing["niiv"],
                "output_hw": [int(image.shape[0]), int(image.shape[2])],
                "output_mpx": image.shape[0] * image.shape[2] / 1e6,
                "read_mib": read_mb() - r0,
                **gap_stats(ticker.gaps(t0, t1)),
                "worst": worst_gap(ticker, t0, t1),
                "calls": call_summary(t0, t1),
                "niiv_shown_after_s": t_niiv - t0,
            }
        )
    out["changes"] = records
    out["cache"] = {"hits": live._renderer.cache.hits, "misses": live._renderer.cache.misses}
    t_end = time.perf_counter()
    widget.live_check.value = False
    out["rss_mib"] = {
        "before_open": rss_before,
        "peak_after_open": rss.peak(t_opening, t_end),
        "peak_open": rss.peak(t_opening, t_opened),
        "peak_start_live": rss.peak(t_opened, t_started),
        "peak_changes": rss.peak(t_started, t_end),
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    rss.stop()
    WATCH.stop()
    viewer.close()
    return out


# ---------------------------------------------------------------------------------------------
# Parent: stores, jobs, table.


def job_configs(args: argparse.Namespace, stores: dict[str, Path], shapes: dict[str, tuple[int, int, int]]) -> list:
    """The screen-resolution job on the large store, and the shared view on both stores."""
    width, height = args.canvas
    large = shapes["large"]
    edge_z = -0.5 * ALPHA

    def z_start(zoom: float) -> float:
        return edge_z + height / 2 / zoom + 8.0  # low edge of the view just inside the volume

    shared_zoom = min(width / SHARED_VIEW[1], height / SHARED_VIEW[0])
    common = {"pans": args.pans, "timeout": args.timeout, "canvas": [width, height]}
    screen = {
        "job": "screen",
        "store": str(stores["large"]),
        "shape": large,
        "zoom": 1.0,
        "z_start": z_start(1.0),
        "x_centre": (large[2] - 1) / 2,
        "y_plane": float(large[1] // 2 + 37),  # inside a chunk: a plane on a chunk edge reads two
        "pan_dz": height / 6,
        **common,
    }
    if z_start(1.0) + args.pans * height / 6 + height / 2 > large[0] * ALPHA + edge_z or width > large[2]:
        raise SystemExit(f"a {width}x{height} canvas does not fit the {large} volume at screen resolution")
    shared = {
        "zoom": shared_zoom,
        "z_start": z_start(shared_zoom),
        "x_centre": SMALL_SHAPE[2] / 2 - 0.5,
        "y_plane": float(SMALL_SHAPE[1] // 2),
        "pan_dz": height / 6 / shared_zoom,
        **common,
    }
    return [
        screen,
        {"job": "small", "store": str(stores["small"]), "shape": shapes["small"], **shared},
        {"job": "large", "store": str(stores["large"]), "shape": large, **shared},
    ]


def run_job(cfg: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one job in a fresh interpreter (its own ru_maxrss and Qt state)."""
    cfg_path, res_path = workdir / f"{cfg['job']}.cfg.json", workdir / f"{cfg['job']}.result.json"
    cfg_path.write_text(json.dumps(cfg))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(cfg_path), "--result", str(res_path)],
        cwd=REPO,
        timeout=cfg["timeout"] * (cfg["pans"] + 3),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not res_path.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"job {cfg['job']} failed (exit {proc.returncode})")
    result = json.loads(res_path.read_text())
    result["process_s"] = time.perf_counter() - t0
    return result


def median(records: list[dict[str, Any]], key: str) -> float:
    return float(np.median([r[key] for r in records])) if records else float("nan")


def summarise(jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline numbers: stalls, screen-resolution times, large/small ratios."""
    screen = jobs["screen"]
    pans = [r for r in screen["changes"] if r["change"].startswith("pan")]
    live_windows = screen["changes"]
    stall_max = max(r["max_ms"] for r in live_windows)
    worst = max(live_windows, key=lambda r: r["max_ms"])
    niiv = median(pans, "niiv_s")
    mpx = median(pans, "output_mpx")
    summary: dict[str, Any] = {
        "stall": {
            "live_max_gap_ms": stall_max,
            "live_p99_gap_ms": max(r["p99_ms"] for r in live_windows),
            "baseline_idle_max_gap_ms": screen["baseline_idle"]["max_ms"],
            "baseline_idle_p99_gap_ms": screen["baseline_idle"]["p99_ms"],
            "baseline_pan_live_off_max_gap_ms": screen["baseline_pan"]["max_ms"],
            "baseline_frame_max_gap_ms": screen["baseline_frame"]["max_gap_ms_median"],
            "baseline_frame_paintgl_ms": screen["baseline_frame"]["paintgl_ms_median"],
            "baseline_frame_loaded_max_gap_ms": screen["baseline_frame_loaded"]["max_gap_ms_median"],
            "baseline_frame_loaded_worst_ms": screen["baseline_frame_loaded"]["max_gap_ms_max"],
            "live_minus_idle_ms": stall_max - screen["baseline_idle"]["max_ms"],
            "live_over_idle": stall_max / screen["baseline_idle"]["max_ms"],
            "live_over_frame": stall_max / screen["baseline_frame"]["max_gap_ms_median"],
            "start_live_max_gap_ms": screen["start_live"]["max_ms"],
            "target_ms": TARGET_STALL_MS,
            "meets_target": stall_max < TARGET_STALL_MS,
            "worst": {"change": worst["change"], **worst["worst"]},
        },
        "screen": {
            "canvas_hw": screen["canvas_hw"],
            "output_hw": pans[0]["output_hw"] if pans else None,
            "output_mpx": mpx,
            "preview_s_median": median(pans, "preview_s"),
            "coarse_s_median": median(pans, "coarse_s"),
            "niiv_s_median": niiv,
            "niiv_ms_per_mpx": niiv / mpx * 1e3 if mpx else float("nan"),
            "jump_preview_s": next((r["preview_s"] for r in screen["changes"] if r["change"] == "jump"), None),
            "jump_niiv_s": next((r["niiv_s"] for r in screen["changes"] if r["change"] == "jump"), None),
        },
    }
    size: dict[str, Any] = {}
    for name in ("small", "large"):
        j = jobs[name]
        size[name] = {
            "open_s": j["open"]["seconds"],
            "open_read_mib": j["open"]["read_mib"],
            "start_live_to_niiv_s": j["start_live"]["to_niiv_s"],
            "normalisation_s": j["start_live"]["normalisation_s"],
            "start_read_mib": j["start_live"]["read_mib"],
            "preview_s_median": median(j["changes"], "preview_s"),
            "niiv_s_median": median(j["changes"], "niiv_s"),
            "pan_read_mib_median": median(j["changes"], "read_mib"),
            "output_mpx": median(j["changes"], "output_mpx"),
            "live_max_gap_ms": max(r["max_ms"] for r in j["changes"]),
            "rss_before_open_mib": j["rss_mib"]["before_open"],
            "rss_peak_mib": j["rss_mib"]["peak_after_open"],
            "rss_peak_open_mib": j["rss_mib"]["peak_open"],
            "rss_peak_start_live_mib": j["rss_mib"]["peak_start_live"],
            "rss_peak_pans_mib": j["rss_mib"]["peak_changes"],
            "ru_maxrss_mib": j["rss_mib"]["ru_maxrss"],
        }
    size["ratio_large_over_small"] = {
        k: size["large"][k] / size["small"][k]
        for k in (
            "open_s",
            "start_live_to_niiv_s",
            "normalisation_s",
            "preview_s_median",
            "niiv_s_median",
            "rss_peak_mib",
            "ru_maxrss_mib",
        )
        if size["small"][k]
    }
    summary["volume_size"] = size
    return summary


def print_table(result: dict[str, Any]) -> None:
    s, jobs = result["summary"], result["jobs"]
    st, sc, vs = s["stall"], s["screen"], s["volume_size"]
    print(f"\nmachine: {result['machine']}")
    print(f"canvas {sc['canvas_hw'][1]}x{sc['canvas_hw'][0]} px, weights {result['weights']}, alpha {ALPHA:g}")
    print("\n1. GUI-thread stalls (2 ms QTimer gaps), live niiv on the screen-resolution xz view")
    rows = [
        (
            "idle viewer, live off: max / p99 gap",
            f"{st['baseline_idle_max_gap_ms']:.1f} / {st['baseline_idle_p99_gap_ms']:.1f} ms",
        ),
        ("pan with live off: max gap", f"{st['baseline_pan_live_off_max_gap_ms']:.1f} ms"),
        (
            "one repaint, nothing changed: gap (of it in paintGL)",
            f"{st['baseline_frame_max_gap_ms']:.1f} ms ({st['baseline_frame_paintgl_ms']:.1f} ms)",
        ),
        (
            "same, all cores busy with torch matmul: median / max",
            f"{st['baseline_frame_loaded_max_gap_ms']:.1f} / {st['baseline_frame_loaded_worst_ms']:.1f} ms",
        ),
        (
            "live, camera change -> niiv shown: max / p99 gap",
            f"{st['live_max_gap_ms']:.1f} / {st['live_p99_gap_ms']:.1f} ms",
        ),
        ("  minus idle max / over idle max", f"{st['live_minus_idle_ms']:+.1f} ms / {st['live_over_idle']:.1f}x"),
        ("  over one repaint's gap", f"{st['live_over_frame']:.1f}x"),
        ("turning live on: max gap", f"{st['start_live_max_gap_ms']:.1f} ms"),
        ("target", f"< {TARGET_STALL_MS:.0f} ms: {'met' if st['meets_target'] else 'NOT met'}"),
    ]
    for k, v in rows:
        print(f"  {k:<52} {v}")
    w = st["worst"]
    if w.get("calls"):
        print(f"  worst stall {w['gap_ms']:.0f} ms ({w['change']}, {w['at_s']:.2f} s after the change), inside it:")
        for c in w["calls"][:6]:
            print(f"    {c['ms']:7.1f} ms  {c['call']}")
    for e in w.get("qt_events", [])[:3]:
        print(f"    {e['ms']:7.1f} ms  Qt event {e['event']} (until the next event)")
    for key, who in (("gui_stacks", "GUI thread"), ("worker_stacks", "niiv worker")):
        for where, n in w.get(key, [])[:2]:
            print(f"    {who} sampled {n}x at: {where}")
    print("  per-change max gap:", ", ".join(f"{r['change']} {r['max_ms']:.0f} ms" for r in jobs["screen"]["changes"]))

    print("\n2. Screen-resolution view: xz, alpha 8, filling the canvas at zoom 1 (median of pans)")
    h, w_ = sc["output_hw"] or (0, 0)
    print(f"  {'output':<52} {w_}x{h} px = {sc['output_mpx']:.2f} MP")
    print(f"  {'camera change -> preview':<52} {sc['preview_s_median'] * 1e3:.0f} ms")
    print(f"  {'camera change -> niiv at 1/4 resolution (progressive)':<52} {sc['coarse_s_median']:.1f} s")
    print(f"  {'camera change -> niiv':<52} {sc['niiv_s_median']:.1f} s")
    print(f"  {'niiv per output megapixel':<52} {sc['niiv_ms_per_mpx']:.0f} ms/MP")
    if sc["jump_niiv_s"] is not None:
        print(
            f"  {'zoom-out jump to this view: preview / niiv':<52} {sc['jump_preview_s'] * 1e3:.0f} ms / "
            f"{sc['jump_niiv_s']:.1f} s"
        )
    for r in jobs["screen"]["changes"]:
        print(
            f"    {r['change']:<8} preview {r['preview_s'] * 1e3:6.0f} ms  niiv {r['niiv_s']:6.1f} s  "
            f"read {r['read_mib']:6.1f} MiB  max gap {r['max_ms']:5.0f} ms"
        )

    sm, lg, ratio = vs["small"], vs["large"], vs["ratio_large_over_small"]
    big = "x".join(str(n) for n in result["shapes"]["large"])
    print(f"\n3. Volume size: the same {sm['output_mpx'] * 1e6:.0f}-pixel view on 256^3 and {big} (z, y, x) zarr")
    print(f"  {'':<36} {'256^3':>12} {big:>14} {'large/small':>12}")

    def row(label: str, key: str, fmt: str, scale: float = 1.0) -> None:
        r = ratio.get(key)
        print(
            f"  {label:<36} {sm[key] * scale:>12{fmt}} {lg[key] * scale:>14{fmt}} "
            f"{(f'{r:.2f}' if r is not None else '-'):>12}"
        )

    print("  (opening: napari slices the lazy planes it shows on the GUI thread; the rest is niiv)")
    row("open layer + xz view (s)", "open_s", ".2f")
    row("  read from disk (MiB)", "open_read_mib", ".1f")
    row("start live -> first niiv (s)", "start_live_to_niiv_s", ".2f")
    row("  normalisation sampling (s)", "normalisation_s", ".3f")
    row("  read from disk (MiB)", "start_read_mib", ".1f")
    row("pan -> preview (ms)", "preview_s_median", ".0f", 1e3)
    row("pan -> niiv (s)", "niiv_s_median", ".2f")
    row("  read per pan (MiB)", "pan_read_mib_median", ".1f")
    row("live max GUI gap (ms)", "live_max_gap_ms", ".0f")
    row("RSS before opening (MiB)", "rss_before_open_mib", ".0f")
    row("peak RSS, sampled (MiB)", "rss_peak_mib", ".0f")
    row("  while opening (MiB)", "rss_peak_open_mib", ".0f")
    row("  while starting live (MiB)", "rss_peak_start_live_mib", ".0f")
    row("  while panning (MiB)", "rss_peak_pans_mib", ".0f")
    row("ru_maxrss (MiB)", "ru_maxrss_mib", ".0f")
    mib = result["store_mib"]
    print(f"  store on disk: 256^3 {mib['small']:.0f} MiB, large {mib['large']:.0f} MiB (compressed)")
    print(f"\ntotal {result['total_s']:.0f} s (stores {result['store_write_s']:.0f} s)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 640x360 canvas, one pan, smaller store")
    parser.add_argument(
        "--canvas", type=positive(int), nargs=2, metavar=("W", "H"), help="canvas size (default 1920 1080)"
    )
    parser.add_argument("--pans", type=positive(int), help="pans per setting (default 3; 1 with --quick)")
    parser.add_argument("--timeout", type=positive(float), default=600.0, help="seconds to wait for one niiv view")
    parser.add_argument("--store-dir", type=Path, help="keep (and reuse) the zarr stores here")
    parser.add_argument(
        "--json", type=report_path, help="default out/bench/viewer.json (viewer-quick.json with --quick)"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.canvas = args.canvas or ([640, 360] if args.quick else [1920, 1080])
    args.pans = args.pans or (1 if args.quick else 3)
    name = "viewer-quick.json" if args.quick else "viewer.json"
    args.json = args.json or REPO / "out" / "bench" / name
    return args


def main() -> None:
    args = parse_args()
    if args.child is not None:
        result = run_child(json.loads(args.child.read_text()))
        args.result.write_text(json.dumps(result, indent=2))
        return
    source = data_file("fibsem", "medulla_a.tif")  # before the stores are written
    if not os.environ.get("DISPLAY"):
        if shutil.which("xvfb-run") is None:
            raise SystemExit("no DISPLAY and no xvfb-run: install xvfb or run under a display")
        os.execvp("xvfb-run", ["xvfb-run", "-a", "-s", XVFB_SCREEN, sys.executable, *sys.argv])

    import torch

    from napari_niiv.data import open_volume
    from napari_niiv.inference.weights import DEFAULT_WEIGHTS

    t_total = time.perf_counter()
    shapes = {"small": SMALL_SHAPE, "large": QUICK_LARGE_SHAPE if args.quick else LARGE_SHAPE}
    tmp = tempfile.TemporaryDirectory(prefix="niiv-bench-viewer-")
    store_dir = args.store_dir or Path(tmp.name)
    store_dir.mkdir(parents=True, exist_ok=True)
    stores = {k: store_dir / f"{k}-{'x'.join(map(str, s))}.zarr" for k, s in shapes.items()}
    t_write = 0.0
    texture = None
    for key, path in stores.items():
        if not store_ready(path, shapes[key]):
            texture = texture if texture is not None else np.asarray(open_volume(source).data)
            print(f"writing {path.name} ...", flush=True)
            t_write += write_store(path, shapes[key], texture)
    del texture
    jobs = {}
    workdir = Path(tmp.name)
    try:
        for cfg in job_configs(args, stores, shapes):
            print(f"running {cfg['job']} ...", flush=True)
            jobs[cfg["job"]] = run_job(cfg, workdir)
        store_mib = {k: dir_bytes(p) / 2**20 for k, p in stores.items()}
    finally:
        tmp.cleanup()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "display": os.environ.get("DISPLAY"),
        "quick": args.quick,
        "weights": DEFAULT_WEIGHTS,
        "shapes": shapes,
        "chunks": CHUNKS,
        "store_mib": store_mib,
        "store_write_s": t_write,
        "summary": summarise(jobs),
        "jobs": jobs,
        "total_s": time.perf_counter() - t_total,
    }
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    run(main)
