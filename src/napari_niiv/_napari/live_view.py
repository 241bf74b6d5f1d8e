"""A layer that shows niiv for whatever part of an input layer is on screen, kept up to date.

Camera, dims and canvas events restart a short debounce timer; when it fires, the visible grid is
computed (pure, :mod:`napari_niiv.inference.viewport`) and handed to a background worker
(:class:`~napari_niiv.inference.worker.LatestWorker`: the newest view wins) that sends back an
interpolated preview first and niiv after. Results come back to the GUI thread through a Qt
signal; a result for a view that is no longer current is dropped.

With a ``fast_model`` (``niiv-fast``, on CPUs), the task shows that small model's image first and
the full model's after; the last image is the full model's exactly (every point is decoded again).
When the view is done, the task goes on encoding the neighbouring planes along the sliced axis
into the latent cache (:meth:`~napari_niiv.inference.views.ViewRenderer.prefetch`), cancelled by
the next view, so that a step of the slider runs only the decoder.

With ``confidence`` on, the same task then computes the view's confidence map
(:mod:`napari_niiv.inference.confidence`, reusing the orientations niiv just decoded) and shows it
in a second layer on exactly the live layer's grid (same scale and translate).
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Image
from qtpy.QtCore import QObject, QTimer, Signal

from ..data.normalise import Normalisation
from ..errors import NiivInputError
from ..inference import confidence
from ..inference.reconstructor import Reconstructor, check_reconstructable
from ..inference.settings import InferenceSettings
from ..inference.viewport import ViewGrid
from ..inference.views import ViewRenderer
from ..inference.worker import LatestWorker
from ..model import NiivModel
from .gui_timing import gui_handler
from .layer_view import (
    SharedRead,
    check_layer,
    current_grid,
    insert_layer,
    layer_units,
    layer_voxel_size,
    level0,
    remove_layers,
    world_per_layer_unit,
)

log = logging.getLogger(__name__)
DEBOUNCE_MS = 60
# A live map layer's attribute while a live view hides it until its own map: whether it was visible
# before (the user's choice), for the next view should this one end first.
_MAP_WAS_VISIBLE = "_niiv_map_was_visible"
# An input layer's attribute holding its live layers (the image, the confidence map): one each per
# input, whichever live view shows them, removed with the input (remove_live_layers)
LIVE_LAYERS = "_niiv_live_layers"
# How the input is shown, which its live layer follows
STYLE = ("contrast_limits", "colormap", "gamma", "visible")


def paused_status(why: str, name: str) -> str:
    """The status of a live view paused because its layer became one niiv cannot take (``why``:
    check_layer's words, which say what to do); the view and the dock say it alike."""
    return f"live view paused: {why}; it goes on once '{name}' is fixed"


class LiveView(QObject):
    """Keeps ``output`` (a layer next to ``layer``) showing niiv for the visible region.

    ``timings`` holds, per view, seconds from the camera change to the preview and to niiv, for
    the status line, tests and the benchmark.
    """

    _result = Signal(int, str, object)

    def __init__(
        self,
        viewer: Any,
        layer: Image,
        model: NiivModel | Callable[[], NiivModel],
        settings: InferenceSettings,
        on_status: Callable[[str], None] | None = None,
        pixel_ratio: float = 1.0,
        confidence: bool = False,
        fast_model: NiivModel | Callable[[], NiivModel | None] | None = None,
        names: tuple[str, str] = ("niiv", "niiv-fast"),
    ) -> None:
        super().__init__()
        self.viewer = viewer
        self.layer = check_layer(layer)
        self.settings = settings
        # Models given as loaders are loaded on the worker thread (reading and validating weights
        # takes ~50-400 ms: too long for the GUI thread); the reconstructors are built there too.
        self._model, self._fast_model = model, fast_model
        self.reconstructor: Reconstructor | None = None
        self.fast_reconstructor: Reconstructor | None = None
        self.fast_first = fast_model is not None
        self.names = names
        self.pixel_ratio = pixel_ratio
        self.on_status = on_status or (lambda text: None)
        self.confidence = bool(confidence)
        # the input's live layers from an earlier view (live off and on, another volume and back, a
        # new setting): shown again, never a second one under the first
        image, mapped = (_alive(ref, viewer) for ref in getattr(self.layer, LIVE_LAYERS, (None, None)))
        self.output: Image | None = image
        self.confidence_output: Image | None = mapped
        self.timings: list[dict[str, float]] = []
        self.failed = False  # a render failed (its message went to on_status)
        self._renderer: ViewRenderer | None = None
        self._fast_renderer: ViewRenderer | None = None
        self._norm: Normalisation | None = None
        # the layer's data as read and its normalisation, shared by its live views (SharedRead), and
        # a count of data changes, so a render that read old data keeps nothing
        self._read: SharedRead = SharedRead.of(self.layer)
        # what the view this one replaces read, held from now on: the read is kept weakly, and the
        # old view (freed by the garbage collector) could let it go before this one asks
        self._held = self._read.cached(level0(self.layer))
        self._data_version = 0
        self._grid: ViewGrid | None = None
        self._generation = 0
        self._closed = False
        # layers new data hid (their images are of the old data), and whether they were visible
        self._hidden_for_data: dict[str, bool] = {}
        self._hide_map()  # an earlier view's map: of other settings, perhaps (alpha, weights, sections)
        self._new_weights: dict[str, Any] | None = None
        self._requested_at = 0.0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.refresh)
        self._result.connect(self._on_result)
        # Results the worker thread sent, and those handled on the GUI thread: the view is busy
        # until its last image is shown, not only until the thread is done. Each count is written
        # by one thread only (the worker's, the GUI's), so they need no lock.
        self._sent_n = self._handled_n = 0
        self._worker: LatestWorker[None] = LatestWorker(
            on_error=lambda exc: self._send(-1, "error", exc), name="niiv-live"
        )
        self._connections = self._watch()
        self._changed()

    # -- events --------------------------------------------------------------------------------
    def _watch(self) -> list[tuple[Any, Callable]]:
        v = self.viewer
        emitters = [
            v.scene.camera.events.center,
            v.scene.camera.events.zoom,
            v.dims.events.point,
            v.dims.events.order,
            v.dims.events.ndisplay,
            v.canvas.events.size,
            v.canvas.grid.events.enabled,
            v.canvas.grid.events.shape,
            v.canvas.grid.events.spacing,
            # where the layer is: its placement, and whether niiv can take it at all (check_layer)
            self.layer.events.scale,
            self.layer.events.translate,
            self.layer.events.rotate,
            self.layer.events.shear,
            self.layer.events.affine,
        ]
        connections = [(e, self._changed) for e in emitters]
        connections += [(self.layer.events.units, self._units_changed)]
        connections += [(self.layer.events.data, self._data_changed), (v.layers.events.removed, self._removed)]
        # the grid's cells are the layers': a layer added or removed changes the visible region
        connections += [(getattr(v.layers.events, kind), self._layers_changed) for kind in ("inserted", "removed")]
        connections += [(getattr(self.layer.events, name), self._style_changed) for name in STYLE]
        for emitter, callback in connections:
            emitter.connect(callback)
        return connections

    @gui_handler
    def _changed(self, event: Any = None) -> None:
        if not self._timer.isActive():
            self._requested_at = time.perf_counter()
        self._timer.start()

    @gui_handler
    def _units_changed(self, event: Any = None) -> None:
        """New units: the same numbers, another size. The view is shown again even where its grid
        (in the layer's units) is the same, so that the live layers take the new unit
        (:meth:`_move_to`); they stayed in the old one, drawn a thousand times too small or large."""
        self._grid = None
        self._changed()

    @gui_handler
    def _data_changed(self, event: Any = None) -> None:
        """New data: latents, normalisation and the last grid no longer apply, nor the image shown
        (niiv of the old data, perhaps at a plane the new data does not have): hidden until the
        new data's first image."""
        self._renderer, self._fast_renderer, self._norm, self._grid = None, None, None, None
        self._data_version += 1  # (the shared read forgets the data itself: SharedRead.of)
        for kind, out in (("niiv", self.output), ("confidence", self.confidence_output)):
            if out is not None and out in self.viewer.layers and kind not in self._hidden_for_data:
                self._hidden_for_data[kind] = out.visible
                out.visible = False
        self._changed()

    @gui_handler
    def _layers_changed(self, event: Any = None) -> None:
        if self.viewer.canvas.grid.enabled:
            self._changed()

    @gui_handler
    def _style_changed(self, event: Any = None) -> None:
        """The live layer shows the input as the input is shown: its contrast limits, colour map,
        gamma and visibility (the dock keeps the input selected, so napari's controls set them)."""
        if self.output is not None and self.output in self.viewer.layers:
            hidden = "niiv" in self._hidden_for_data  # its image is of old data: shown with the new one
            if hidden:
                self._hidden_for_data["niiv"] = self.layer.visible
            _copy_style(self.layer, self.output, visible=not hidden)

    @gui_handler
    def _removed(self, event: Any) -> None:
        if event.value is self.layer:
            self.on_status(f"live view stopped: '{self.layer.name}' was closed")
            self.close()
            remove_live_layers(self.viewer, self.layer, now=False)  # inside napari's removal of the input
            return
        elif event.value is self.output:
            self.output = None
        elif event.value is self.confidence_output:
            self.confidence_output = None
            if self.confidence:  # the user's deletion (the plugin's own removals forget the layer first)
                self.on_status(
                    "confidence map layer deleted: it comes back with the next view while 'confidence map' is "
                    "ticked; untick it in the niiv dock to stop the map"
                )
        self._remember()

    # -- work ----------------------------------------------------------------------------------
    @gui_handler
    def refresh(self, force: bool = False) -> None:
        """Submit the current view if it differs from the last one (or ``force``); a layer niiv
        can no longer take (rotated, sheared, mixed units, flipped, made 2D while live) pauses the
        view with check_layer's words, until the layer is fixed."""
        try:
            check_layer(self.layer)
        except NiivInputError as exc:
            self._pause(str(exc))
            return
        grid = current_grid(self.viewer, self.layer, self.settings.scale, self.pixel_ratio, self.settings.alpha)
        if grid is None:
            in_2d = self.viewer.dims.ndisplay == 2
            self.on_status("live view: nothing visible" if in_2d else "live view: 2D views only")
            self._drop_view()
            return
        if not force and grid.same_as(self._grid):
            return
        self._grid = grid
        self._generation += 1
        gen, asked, with_map, fast = self._generation, self._requested_at, self.confidence, self.fast_first
        step = self._slider_step(grid.sliced_axis)
        self._worker.submit(lambda cancelled: self._render(gen, grid, asked, cancelled, with_map, fast, step))

    def _drop_view(self) -> None:
        """The view in flight is left: stopped, and its results dropped."""
        if self._grid is not None:
            self._grid = None
            self._generation += 1
            self._worker.submit(lambda cancelled: None)

    def _pause(self, why: str) -> None:
        """The layer is no longer one niiv can take: say why (check_layer's words, which say what to
        do), stop the view in flight and remove the live layers (their images sit on the old grid,
        not where the changed layer is); the next change that makes the layer valid shows it again."""
        self.on_status(paused_status(why, self.layer.name))
        self._drop_view()
        if self.output is not None or self.confidence_output is not None:
            self.output = self.confidence_output = None
            self._hidden_for_data.clear()
            remove_live_layers(self.viewer, self.layer)

    def _slider_step(self, axis: int) -> float:
        """One step of the dims slider along the layer's data ``axis``, in input pixels: the
        slider moves in the viewer's world unit (napari shows a layer in micrometres beside one in
        nanometres in nanometres: :func:`~.layer_view.world_per_layer_unit`), the voxel is the
        layer's (a diagonal affine included)."""
        dim = self.viewer.dims.ndim - 3 + axis
        world_step = float(self.viewer.dims.range[dim].step) / world_per_layer_unit(self.viewer, self.layer)
        return world_step / float(layer_voxel_size(self.layer)[axis])

    def set_fast_first(self, on: bool) -> None:
        """Show niiv-fast before the full model (when a fast model was given) from the next view."""
        self.fast_first = bool(on) and self._fast_model is not None

    @gui_handler
    def set_confidence(self, on: bool) -> None:
        """Show the confidence map of the view (computed after niiv) or remove its layer."""
        self.confidence = bool(on)
        if on:
            self._requested_at = time.perf_counter()
            self.refresh(force=True)
        elif self.confidence_output is not None:
            layer, self.confidence_output = self.confidence_output, None
            self._remember()
            remove_layers(self.viewer, [layer])

    def _render(
        self,
        gen: int,
        grid: ViewGrid,
        asked: float,
        cancelled: Callable[[], bool],
        with_map: bool = False,
        fast: bool = False,
        step: float = 1.0,
    ) -> None:
        """On the worker thread: the preview, niiv-fast (with ``fast``), partial images and niiv
        sent to the GUI thread as they come, all in the input's intensity scale (converting here
        keeps the GUI thread free); with ``with_map`` the confidence map after niiv; then the
        neighbouring planes (``step`` input pixels apart) are prefetched until a newer view
        cancels. The GUI thread drops whatever arrives for a view that is no longer current."""
        self._build_reconstructors()
        version = self._data_version
        renderer, fast_renderer, norm = self._renderer, self._fast_renderer, self._norm  # the GUI may reset them
        if renderer is None or norm is None:
            # what the whole-volume layer, a save and the CLI refuse is not shown live either
            shape = tuple(int(n) for n in level0(self.layer).shape[-3:])
            check_reconstructable(shape, self.reconstructor.model, self.settings.volume_orientation)  # type: ignore[union-attr]
            data, norm = self._read.get(level0(self.layer))
            renderer = ViewRenderer(data, norm, self.reconstructor)  # type: ignore[arg-type]
            fast_renderer = None
            if self._data_version == version:  # else the data changed meanwhile: the next render reads it
                self._renderer, self._fast_renderer, self._norm = renderer, None, norm
        if fast_renderer is None and self.fast_reconstructor is not None:
            fast_renderer = ViewRenderer(renderer.view.data, norm, self.fast_reconstructor)
            if self._data_version == version:
                self._fast_renderer = fast_renderer
        state, self._new_weights = self._new_weights, None
        if state is not None:  # fine-tuning preview: swap weights between renders, never during one
            renderer.load_weights(state)

        def result(stage: str, image: np.ndarray) -> tuple[int, str, Any]:
            return gen, stage, (grid, norm.invert(image, np.float32), asked)

        def send(stage: str, image: np.ndarray) -> None:
            self._send(*result(stage, image))

        base = renderer.preview(grid)
        send("preview", base)
        if cancelled():
            return None
        shown_fast = fast and fast_renderer is not None
        if shown_fast:  # the small model's image first, the full one over it
            quick = fast_renderer.render(grid, cancelled)
            if quick is None:
                return None
            send("fast", quick)
            base = quick
        parts: dict[str, np.ndarray] = {}
        niiv = renderer.render(
            grid,
            cancelled,
            # After niiv-fast's image, no partial images: each costs the GUI a layer update and a
            # repaint (with software OpenGL, a 2 MP repaint takes the CPU from niiv for ~0.5 s),
            # and niiv-fast's image is already close to the full model's.
            partial=None if shown_fast else (lambda image: send("partial", image)),
            base=base,
            coarse=None if shown_fast else (lambda image: send("coarse", image)),
            parts=parts,
        )
        if niiv is None:
            return None
        send("niiv", niiv)
        if with_map and self.confidence:  # (the box may have been unticked since this view was asked)
            uncertainty = renderer.render_confidence(grid, cancelled, parts)
            if uncertainty is None:
                return None
            self._send(gen, "confidence", (grid, confidence.to_intensity(uncertainty, norm), asked, norm))
        done = renderer.prefetch(grid, step, cancelled)
        if not cancelled():
            self._send(gen, "prefetched", done)
        return None

    def _build_reconstructors(self) -> None:
        """On the worker thread, once: load the models given as loaders and build their reconstructors."""
        if self.reconstructor is None:
            self.reconstructor = Reconstructor(_loaded(self._model), self.settings)  # type: ignore[arg-type]
        if self.fast_reconstructor is None and self._fast_model is not None:
            fast = _loaded(self._fast_model)
            if fast is None:
                self._fast_model = None
            else:
                self.fast_reconstructor = Reconstructor(fast, self.settings)

    def _send(self, gen: int, stage: str, payload: Any) -> None:
        """From the worker thread: a result for :meth:`_on_result`, counted before it is on its way."""
        self._sent_n += 1
        self._result.emit(gen, stage, payload)

    @gui_handler
    def _on_result(self, gen: int, stage: str, payload: Any) -> None:
        """On the GUI thread: show a result if it is for the current view."""
        self._handled_n += 1
        if self._closed:
            return  # a result, or an error, still on its way when the view was closed
        if stage == "error":
            msg = str(payload) if isinstance(payload, NiivInputError) else f"{type(payload).__name__}: {payload}"
            if not isinstance(payload, NiivInputError):
                log.error("live niiv failed", exc_info=payload)
            self.failed = True
            self.on_status(f"live view failed: {msg}")
            return
        if gen != self._generation or self.layer not in self.viewer.layers:
            return  # stale, or a result still queued when the layer or viewer closed
        if stage == "confidence":
            if self.confidence:  # a map asked for before the box was unticked is not shown
                self._show_confidence(*payload)
            return
        if stage == "prefetched":
            if self.timings:
                self.timings[-1]["prefetched"] = payload
            return
        grid, image, asked = payload
        self._show(grid, image)
        elapsed = time.perf_counter() - asked
        h, w = _size2d(grid)
        full, small = self.names
        if stage == "preview":
            self.timings.append({"preview": elapsed})
            self.on_status(f"preview {h}x{w} px in {elapsed * 1000:.0f} ms; {full} running...")
        elif stage == "fast":
            if self.timings:
                self.timings[-1]["fast"] = elapsed
            self.on_status(f"showing {small} ({h}x{w} px in {elapsed:.1f} s); {full} running...")
        elif stage == "coarse":
            if self.timings:
                self.timings[-1]["coarse"] = elapsed
            self.on_status(f"{full} at 1/4 resolution in {elapsed:.1f} s; full resolution running...")
        elif stage == "niiv":
            if self.timings:
                self.timings[-1]["niiv"] = elapsed
            self.on_status(f"showing {full}: {grid.kind} view {h}x{w} px in {elapsed:.1f} s")

    def _on_grid(self, grid: ViewGrid, image: np.ndarray, name: str, **style: Any) -> Image:
        """A new layer of ``image`` placed on the view's grid, in the volume's units and axes."""
        return Image(
            image,
            name=name,
            scale=grid.world_step,
            translate=grid.world_start,
            units=layer_units(self.layer),
            axis_labels=tuple(self.layer.axis_labels[-3:]),
            **style,
        )

    @staticmethod
    def _move_to(out: Image, grid: ViewGrid, image: np.ndarray, units: tuple[str, ...] | None = None) -> None:
        """Show ``image`` in the existing layer ``out``, placed on ``grid``, in ``units`` when given
        (the input's: they may have changed since ``out`` was made).

        Only what changed is set (a pan moves the layer, a zoom also scales it), and an image of
        the layer's shape and dtype is copied into its array, then one refresh: napari recomputes
        the viewer's dims from every layer on each scale, translate and data event (~10 ms each
        beside a 1920x1080 view here, ~20 ms on an AVX2 laptop core), so a new array for the same
        grid (niiv-fast's image, then the full one) cost twice what the copy and refresh do."""
        scale = not np.allclose(out.scale, grid.world_step)
        translate = not np.allclose(out.translate, grid.world_start)
        data = out.data
        in_place = (
            isinstance(data, np.ndarray)
            and data.shape == image.shape
            and data.dtype == image.dtype
            and data.flags.writeable
            and not _async_slicing()  # napari's slicing thread could read the array while it is written
        )
        # One refresh per result, not three: napari re-slices on each of scale, translate, data.
        before = tuple(out.units)
        with out._block_refresh():
            if units is not None:
                out.units = units  # napari's setter changes nothing when they are the same
            new_units = tuple(out.units) != before
            if scale:
                out.scale = grid.world_step
            if translate:
                out.translate = grid.world_start
            if not in_place:
                out.data = image
        if in_place:
            np.copyto(data, image)
        # the extent changes only with the grid, the units or a new array
        out.refresh(extent=scale or translate or new_units or not in_place)

    def _show(self, grid: ViewGrid, image: np.ndarray) -> None:
        if self.output is None or self.output not in self.viewer.layers:
            self.output = self._on_grid(
                grid,
                image,
                f"{self.layer.name} niiv live",
                contrast_limits=self.layer.contrast_limits,
                colormap=self.layer.colormap,
                metadata={"niiv_live_of": self.layer.name},
            )
            _copy_style(self.layer, self.output)
            self._insert(self.output, self.layer)
            self._remember()
            return
        self._move_to(self.output, grid, image, layer_units(self.layer))
        self._show_again("niiv", self.output)

    def _show_again(self, kind: str, out: Image) -> None:
        """Show ``out`` as it was before new data hid it (once: a layer the user hides stays hidden)."""
        was = self._hidden_for_data.pop(kind, None)
        if kind == "confidence":
            setattr(out, _MAP_WAS_VISIBLE, None)
        if was is not None:
            out.visible = was

    def _remember(self) -> None:
        """Keep this input's live layers with it, for the next live view of it (weakly: a live
        layer the user deletes is freed, image and all)."""
        setattr(
            self.layer,
            LIVE_LAYERS,
            tuple(None if out is None else weakref.ref(out) for out in (self.output, self.confidence_output)),
        )

    @gui_handler
    def _insert(self, layer: Image, after: Image) -> None:
        """Add a new layer above ``after``, the selection unchanged (the input stays selected):
        napari builds its vispy visual and layer controls here (once per layer; timed apart from
        our updates)."""
        insert_layer(self.viewer, self.viewer.layers.index(after) + 1, layer)

    def _show_confidence(self, grid: ViewGrid, image: np.ndarray, asked: float, norm: Normalisation) -> None:
        """The map of the view on the live layer's grid: same scale and translate."""
        elapsed = time.perf_counter() - asked
        if self.timings:
            self.timings[-1]["confidence"] = elapsed
        h, w = _size2d(grid)
        self.on_status(
            f"showing {self.names[0]}: {grid.kind} view {h}x{w} px and its confidence map in {elapsed:.1f} s"
        )
        out = self.confidence_output
        if out is None or out not in self.viewer.layers:
            self.confidence_output = self._on_grid(
                grid,
                image,
                f"{self.layer.name} niiv confidence",
                contrast_limits=confidence.contrast_limits(norm),
                colormap=confidence.COLORMAP,
                blending="additive",
                metadata={"niiv_confidence_of": self.layer.name},
            )
            self._hidden_for_data.pop("confidence", None)  # (a map hidden, then removed: this one is new)
            anchor = self.output if self.output in self.viewer.layers else self.layer
            self._insert(self.confidence_output, anchor)
            self._remember()
            return
        self._move_to(out, grid, image, layer_units(self.layer))
        self._show_again("confidence", out)

    @gui_handler
    def update_weights(self, state: dict[str, Any]) -> None:
        """Show the view with new weights (a fine-tuning preview); they are loaded on the worker
        thread before its next render."""
        self._new_weights = state
        self._requested_at = time.perf_counter()
        self._hide_map()  # the old weights' map
        self.refresh(force=True)

    def _hide_map(self) -> None:
        """Hide the map shown until this view's own map replaces it (:meth:`_show_again`): the map
        of other settings or weights, left over the new niiv image for as long as niiv and the map
        take, showed where the *old* reconstruction was unsure."""
        out = self.confidence_output
        if out is not None and out in self.viewer.layers and "confidence" not in self._hidden_for_data:
            # hidden by an earlier view whose map never came (live unticked meanwhile): not the user's
            was = getattr(out, _MAP_WAS_VISIBLE, None)
            self._hidden_for_data["confidence"] = out.visible if was is None else was
            setattr(out, _MAP_WAS_VISIBLE, self._hidden_for_data["confidence"])
            out.visible = False

    @property
    def cannot_start(self) -> bool:
        """It failed before anything could be set up for the layer (weights, data, normalisation):
        the volume's failure (constant, NaN in the sample), not one view's."""
        return self.failed and self._renderer is None

    @property
    def busy(self) -> bool:
        """A view is waiting, computing, or its results are on their way to the GUI thread (after
        :meth:`close` they are dropped on arrival, or never arrive: no longer counted)."""
        pending = not self._closed and self._handled_n < self._sent_n
        return self._timer.isActive() or self._worker.busy or pending

    def close(self, wait: bool = False) -> None:
        """Stop listening and computing; the last image stays (the viewer holds its layers; the
        next live view of the input finds them). Its thread ends within one decoding step (up to a
        second or so on a CPU) and whatever it still sends is dropped: the GUI thread waits for it
        only with ``wait`` (the viewer closing), not when the view is replaced."""
        self._closed = True
        with contextlib.suppress(RuntimeError):  # Qt deleted the timer first (interpreter exit)
            self._timer.stop()
        for emitter, callback in self._connections:
            emitter.disconnect(callback)
        self._connections = []
        self._worker.close(timeout=10.0 if wait else 0.0)
        self.output = self.confidence_output = None  # a layer the user deletes is freed with its image


def _alive(ref: weakref.ref | None, viewer: Any) -> Image | None:
    """The layer ``ref`` refers to, if it is still in the viewer."""
    layer = ref() if ref is not None else None
    return layer if layer is not None and layer in viewer.layers else None


def _copy_style(source: Image, target: Image, visible: bool = True) -> None:
    """``target`` shown as ``source`` is (STYLE; its visibility too with ``visible``): only what
    differs is set (each set redraws)."""
    if tuple(target.contrast_limits) != tuple(source.contrast_limits):
        target.contrast_limits = source.contrast_limits
    if target.gamma != source.gamma:
        target.gamma = source.gamma
    if target.colormap.name != source.colormap.name:
        target.colormap = source.colormap
    if visible and target.visible != source.visible:
        target.visible = source.visible


def remove_live_layers(viewer: Any, layer: Any, now: bool = True) -> None:
    """Remove the live layers of ``layer`` (closed): they show nothing of use without it, and napari
    on software OpenGL crashed at the next repaint when a one-plane layer was left alone beside
    nothing 3D. ``now=False`` from within napari's removal of ``layer`` (:func:`.remove_layers`)."""
    outs = [_alive(ref, viewer) for ref in getattr(layer, LIVE_LAYERS, ())]
    setattr(layer, LIVE_LAYERS, (None, None))
    remove_layers(viewer, [out for out in outs if out is not None], now=now)


def _loaded(model: Any) -> NiivModel | None:
    """A model, or what its loader returns."""
    return model if isinstance(model, NiivModel) else model()


def _async_slicing() -> bool:
    """napari's experimental asynchronous slicing (off by default) slices layers on another thread."""
    from napari.settings import get_settings

    return bool(get_settings().experimental.async_)


def _size2d(grid: ViewGrid) -> tuple[int, int]:
    return tuple(n for a, n in enumerate(grid.shape) if a != grid.sliced_axis)  # type: ignore[return-value]
