"""Layers > niiv > Reconstruct isotropic (and the same in the layer list's right-click menu)."""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from napari.viewer import Viewer
from qtpy.QtCore import QObject, QThread, QTimer, Signal

from ..data.degrade import ALPHA_RANGE
from ..errors import NiivInputError
from ..inference import confidence
from ..inference.devices import pick_device
from ..inference.lazy_volume import LazyIsotropic
from ..inference.reconstructor import Reconstructor, check_reconstructable
from ..inference.settings import InferenceSettings
from ..inference.weights import DEFAULT_WEIGHTS, fast_weights, load_weights, resolve_weights
from .activity import Activity
from .gui_timing import gui_handler
from .layer_view import (
    SharedRead,
    check_layer,
    insert_layer,
    layer_alpha,
    layer_geometry,
    layer_units,
    level0,
    remove_layers,
    store_geometry,
)

log = logging.getLogger(__name__)
REFRESH_MS = 250


def reconstruct_isotropic(layer: Image, viewer: Viewer) -> Any:
    """Add a lazy isotropic niiv layer over the whole of the active volume layer: prepared on a
    thread (weights, normalisation, a small lazy input read into memory: up to seconds, which froze
    the window when done here), inserted when ready. Returns the napari worker."""
    from napari.qt.threading import create_worker

    # errored connected here: napari would otherwise re-raise the refusal in the event loop
    connect = {"returned": lambda prepared: insert_prepared(viewer, prepared), "errored": _report_failure}
    return create_worker(prepare_isotropic_layer, layer, menu=True, _connect=connect)


def insert_prepared(viewer: Viewer, prepared: PreparedLayer) -> Image | None:
    """Show a layer prepared on a thread (:func:`show_isotropic_layer`), unless its input was closed
    meanwhile: then its lazy volume is closed and None returned."""
    if prepared.source not in viewer.layers:
        prepared.lazy.close()
        return None
    return show_isotropic_layer(viewer, prepared)


def _report_failure(exc: BaseException) -> None:
    if not isinstance(exc, NiivInputError):
        log.error("preparing the whole-volume layer failed", exc_info=exc)
    show_error(str(exc))


@dataclass
class PreparedLayer:
    """What a whole-volume layer needs before napari sees it, made off the GUI thread: reading and
    validating the weights, sampling the normalisation (0.1-0.5 s), and the napari layer itself
    (a plain evented object until it is inserted; its first slice of the lazy levels, 15-30 ms)."""

    source: Image
    lazy: LazyIsotropic
    output: Image  # its metadata records the settings and weights


def prepare_isotropic_layer(
    layer: Any,
    settings: InferenceSettings | None = None,
    weights: str = DEFAULT_WEIGHTS,
    fast: bool = True,
    menu: bool = False,
) -> PreparedLayer:
    """Check ``layer``, load the weights (and, with ``fast``, niiv-fast for 3D views and coarse
    levels on a CPU; without it the weights render those too, slower) and set up the lazy volume;
    no napari calls (any thread). ``settings`` default to the layer's own anisotropy. ``menu``: for
    the Layers menu's command, whose refusals point to the dock for what the menu cannot set."""
    layer = check_layer(layer)
    if settings is None:
        settings = InferenceSettings(alpha=_scale_alpha(layer))
    data = level0(layer)
    model = load_weights(resolve_weights(weights)).model
    shape = tuple(int(s) for s in data.shape[-3:])
    try:
        check_reconstructable(shape, model, settings.volume_orientation)
    except NiivInputError as exc:
        if not menu:
            raise
        if shape[0] < 2:  # other weights help only a volume too narrow for these
            raise NiivInputError(f"'{layer.name}': {exc}") from None
        raise NiivInputError(
            f"'{layer.name}': {exc} (Layers > niiv runs {weights}: for other weights, pick them in the niiv dock, "
            "Plugins > niiv isotropic view, and press Whole volume (lazy layer))"
        ) from None
    geometry = layer_geometry(layer, settings)
    fast_path = fast_weights(weights, pick_device(settings.device).type, settings.sections) if fast else None
    small = Reconstructor(load_weights(fast_path).model, settings) if fast_path is not None else None
    # read into memory when small enough (the tiles' interpolated stand-ins are made on napari's
    # thread then), once for the layer's live view and whole-volume layers alike
    source, norm = SharedRead.of(layer).get(data)
    # what File > Save of the layer writes: the layer's placement, but isotropic voxels for a typed alpha
    saved = store_geometry(layer, settings)
    lazy = LazyIsotropic(source, norm, Reconstructor(model, settings), saved, fast=small)
    lazy.out_dtype = data.dtype if np.dtype(data.dtype).kind in "ui" else np.float32
    out = Image(
        lazy.levels,
        multiscale=True,
        name=f"{layer.name} isotropic (niiv)",
        scale=geometry.voxel_size,
        translate=geometry.translation,
        units=layer_units(layer),  # geometry.unit is layer_unit(layer) too
        axis_labels=("z", "y", "x"),
        contrast_limits=layer.contrast_limits,
        colormap=layer.colormap,
        metadata={"niiv": {"source": layer.name, "settings": settings.to_dict(), "weights": weights}},
    )
    return PreparedLayer(layer, lazy, out)


def _scale_alpha(layer: Image) -> float:
    """The alpha the Layers menu runs ``layer`` at: its z voxel over its xy voxel, when that says
    how much coarser z is (else a NiivInputError that says where to set it)."""
    alpha = layer_alpha(layer)
    if alpha is None:
        raise NiivInputError(
            f"'{layer.name}' has the same scale on z and x/y, so its anisotropy is unknown: pick the "
            "volume in the niiv widget and set alpha there, or give the layer its voxel sizes (napari's console: "
            "`layer.scale = (z, y, x)`)"
        )
    lo, hi = ALPHA_RANGE
    if not lo <= alpha <= hi:
        finer = " (z finer than x/y: niiv only fills in a coarser z)" if alpha < lo else ""
        raise NiivInputError(
            f"'{layer.name}' has z voxels {alpha:.3g} times its xy voxels{finer}, outside alpha {lo:g} to {hi:g}: "
            "is its scale right? Correct it (napari's console: `layer.scale = (z, y, x)`), or pick the volume in the "
            "niiv widget and set alpha there"
        )
    return alpha


@gui_handler
def show_isotropic_layer(viewer: Any, prepared: PreparedLayer) -> Image:
    """Insert the prepared lazy layer on top, on the GUI thread: napari builds its visual and
    controls here (once per layer); the input stays selected."""
    out = prepared.output
    TileProgress(viewer, out, prepared.lazy, prepared.source)
    insert_layer(viewer, len(viewer.layers), out)  # on top; the input stays selected
    show_info(
        f"niiv: '{out.name}' computes the tiles you look at; to write it all, use Save isotropic volume... "
        "in the niiv dock (background, resumable) or File > Save Selected Layers (small volumes)"
    )
    return out


def add_isotropic_layer(
    viewer: Any, layer: Any, settings: InferenceSettings | None = None, weights: str = DEFAULT_WEIGHTS
) -> Image:
    """A multiscale layer of niiv over the whole volume, prepared on the calling thread (scripts and
    tests; the Layers menu's command and the dock prepare it on a thread): napari asks only for the
    tiles it shows, they are computed in the background (counted in the niiv dock's activity bar)
    and cached."""
    return show_isotropic_layer(viewer, prepare_isotropic_layer(layer, settings, weights))


class TileProgress(QObject):
    """GUI side of a lazy layer: redraw as tiles arrive, count them while any are pending,
    the background thread stopped when the layer is removed, and the layer's confidence map
    (:meth:`show_confidence`) on the same tiles."""

    _tile_done = Signal()
    _preview_done = Signal()  # a stand-in of a lazy input's tile read: redrawn, not counted
    _failed = Signal(object)

    def __init__(self, viewer: Any, layer: Image, lazy: LazyIsotropic, source: Image | None = None) -> None:
        super().__init__()
        self.viewer, self.layer, self.lazy = viewer, layer, lazy
        # the input, weakly (the layer's data is held by the lazy volume; the layer itself is the
        # user's to close): new data there is said once, as this layer keeps showing the data it had
        self._source = weakref.ref(source) if source is not None else None
        self._source_changed_told = False
        if source is not None:
            source.events.data.connect(self._source_data_changed)
        self.confidence_layer: Image | None = None
        self.done = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self._redraw)
        # The bar is updated from the event loop, never inside napari's slicing (set_data fires
        # during a draw, and a new progress bar then re-enters the draw).
        self._bar_timer = QTimer(self)
        self._bar_timer.setSingleShot(True)
        self._bar_timer.setInterval(0)
        self._bar_timer.timeout.connect(self._update_bar)
        self._tile_done.connect(self._on_tile)
        self._preview_done.connect(self._on_preview)
        self._failed.connect(self._on_error)
        lazy.on_tile = lambda key: self._tile_done.emit()
        lazy.on_preview = lambda key: self._preview_done.emit()
        lazy.on_error = self._failed.emit
        lazy.on_write_progress = self._on_write_progress
        layer.events.set_data.connect(self._schedule_bar)
        viewer.layers.events.removed.connect(self._removed)
        layer._niiv_progress = self  # keep this bridge alive as long as the layer

    @gui_handler
    def _on_tile(self) -> None:
        self.done += 1
        self._schedule_redraw()
        self._bar_timer.start()

    @gui_handler
    def _on_preview(self) -> None:
        self._schedule_redraw()

    def _schedule_redraw(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    @gui_handler
    def _redraw(self) -> None:
        for layer in (self.layer, self.confidence_layer):
            if layer is not None and layer in self.viewer.layers:
                layer.refresh()

    def show_confidence(self) -> Image:
        """Add the layer's confidence map (once): a multiscale layer with the same levels, scale and
        translate, whose tiles are computed with the niiv tiles on the same worker."""
        if self.confidence_layer is not None and self.confidence_layer in self.viewer.layers:
            return self.confidence_layer
        lazy, layer = self.lazy, self.layer
        lazy.enable_confidence(True)
        self.confidence_layer = Image(
            lazy.confidence_levels,
            multiscale=True,
            name=f"{layer.name} confidence",
            scale=layer.scale,
            translate=layer.translate,
            units=layer.units,
            axis_labels=layer.axis_labels,
            contrast_limits=confidence.contrast_limits(lazy.norm),
            colormap=confidence.COLORMAP,
            blending="additive",
            metadata={"niiv_confidence_of": layer.name},
        )
        self.confidence_layer.events.set_data.connect(self._schedule_bar)
        insert_layer(self.viewer, self.viewer.layers.index(layer) + 1, self.confidence_layer)
        return self.confidence_layer

    def hide_confidence(self, now: bool = True) -> None:
        """Remove the confidence layer and stop computing maps (those computed stay cached);
        ``now=False`` from within napari's removal of another layer (:func:`.remove_layers`)."""
        self.lazy.enable_confidence(False)
        layer, self.confidence_layer = self.confidence_layer, None
        if layer is not None:
            remove_layers(self.viewer, [layer], now=now)

    @gui_handler
    def _schedule_bar(self, event: Any = None) -> None:
        self._bar_timer.start()

    @gui_handler
    def _update_bar(self) -> None:
        """Count the tiles of one burst of requests: the dock's activity bar (:meth:`activity`)
        shows them. (napari's own progress bar is not used for tiles: creating one in its
        activity dock took 120-240 ms of the GUI thread, once per burst.)"""
        if not self.lazy.pending:
            self.done = 0

    def activity(self) -> Activity | None:
        """The tiles still to compute, for the dock's inline bar; None when there are none."""
        pending = self.lazy.pending
        if not pending:
            return None
        return Activity(
            f"tiles of '{self.layer.name}': {self.done} computed, {pending} to go", self.done, self.done + pending
        )

    def _on_write_progress(self, done: int, total: int) -> None:
        """napari's File > Save writes on the GUI thread: show how far it is in the status bar. The
        store's worker threads report too; Qt must not be touched from them, and the GUI thread's
        next report includes what they did."""
        if QThread.currentThread() != self.thread():
            return
        self.viewer.status = f"niiv: writing '{self.layer.name}', {100 * done / max(total, 1):.0f} %"

    @gui_handler
    def _on_error(self, exc: BaseException) -> None:
        log.error("niiv tile failed", exc_info=exc)
        show_error(f"niiv could not compute a tile of '{self.layer.name}': {exc}")

    @gui_handler
    def _source_data_changed(self, event: Any = None) -> None:
        """The input got new data: this layer is niiv of the data it was made from (its tiles, its
        save), which no longer is what the input shows; said once per layer."""
        source = self._source() if self._source is not None else None
        if self._source_changed_told or source is None or self.layer not in self.viewer.layers:
            return
        self._source_changed_told = True
        show_warning(
            f"niiv: '{source.name}' has new data; '{self.layer.name}' still shows (and File > Save writes) niiv of "
            "the data it was made from: for the new data, make the whole-volume layer again"
        )

    def _disconnect_source(self) -> None:
        source = self._source() if self._source is not None else None
        if source is not None:
            source.events.data.disconnect(self._source_data_changed)
        self._source = None

    @gui_handler
    def _removed(self, event: Any) -> None:
        if event.value is self.confidence_layer:
            self.confidence_layer = None
            self.lazy.enable_confidence(False)
        elif event.value is self.layer:
            self.viewer.layers.events.removed.disconnect(self._removed)
            self._disconnect_source()
            self.lazy.close()
            self.hide_confidence(now=False)  # the map of a closed layer can no longer be computed
