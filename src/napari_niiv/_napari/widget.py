"""The niiv dock widget: pick a volume, weights and device; watch niiv follow the view live, add the
whole volume as a lazy layer, save it in the background, fine-tune on it.

The dock scrolls when the window is too short for it (napari docks do not), so no control or
status line is ever squeezed; every control has a tooltip, "?" opens the napari guide, and error
messages start with the control to change.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton
from napari.layers import Image
from qtpy.QtCore import QEvent, QSize, Qt, QUrl, Signal
from qtpy.QtGui import QDesktopServices
from qtpy.QtWidgets import QFileDialog, QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

from ..data.degrade import ALPHA_RANGE, check_alpha
from ..errors import NiivInputError
from ..inference.devices import available_devices, keep_triton_out_without_cuda, pick_device
from ..inference.export import DEFAULT_CHUNKS
from ..inference.reconstructor import check_reconstructable
from ..inference.settings import ORIENTATIONS, PRECISIONS, InferenceSettings, check_scale
from ..inference.store import check_outside_input, check_writable
from ..inference.suggestion import alpha_fit_note, sections_fit_note, suggest_weights
from ..inference.weights import (
    DEFAULT_WEIGHTS,
    FAST_WEIGHTS,
    Weights,
    available_weights,
    fast_weights,
    learned_degradation,
    load_weights,
    read_metadata,
)
from . import dock_memory
from .activity import Activity, ActivityBar
from .context_menu import register_layer_context_action
from .gui_timing import gui_handler
from .layer_view import (
    check_layer,
    described_source,
    layer_alpha,
    layer_source,
    layer_unit,
    layer_voxel_size,
    level0,
    remove_layers,
    store_geometry,
)
from .live_view import LiveView, paused_status, remove_live_layers
from .save_job import BackgroundSave, SaveJob, as_store_path, default_save_path
from .training_panel import named, status_label

# The sections control's choices (shown, value): data.degrade's degradations, psf at one spacing.
SECTIONS = (("thick (EM)", "thick"), ("thin", "thin"), ("psf (light)", "psf"))

GUIDE_URL = "https://github.com/napari-niiv/napari-niiv/blob/main/docs/napari.md"
MAX_WIDTH = 480  # leave the canvas the room
# The status when layers are open but none is a volume niiv can take, and how many say why
NO_VOLUME = "volume: no open layer is a 3D volume niiv can take"
NO_VOLUME_REASONS = 4


log = logging.getLogger(__name__)


def weight_choices(widget: Any = None) -> list[str]:
    """Shipped weights first, then the user's (trained in the viewer or with ``niiv train``)."""
    return list(available_weights())


def is_niiv_output(layer: Any) -> bool:
    """The plugin's own layers: the live view (metadata ``niiv_live_of``), lazy isotropic layers
    (metadata ``niiv``) and confidence maps (``niiv_confidence_of``)."""
    metadata = getattr(layer, "metadata", None) or {}
    return "niiv_live_of" in metadata or "niiv" in metadata or "niiv_confidence_of" in metadata


def scale_alpha(layer: Image) -> float | None:
    """The alpha ``layer``'s scale gives, when niiv can use it (within ``ALPHA_RANGE``); else None."""
    alpha = layer_alpha(layer)
    return alpha if alpha is not None and ALPHA_RANGE[0] <= alpha <= ALPHA_RANGE[1] else None


def alpha_unknown_message(layer: Any, alpha: float) -> str:
    """Why niiv waits for an alpha for ``layer``: its scale gives none, or one out of range."""
    ratio = layer_alpha(layer)
    if ratio is None:
        why = "has the same scale on z and x/y, so how much coarser z is is unknown"
    else:
        lo, hi = ALPHA_RANGE
        why = f"has z voxels {ratio:.3g} times its xy voxels, outside {lo:g} to {hi:g} (is its scale right?)"
    return (
        f"alpha (z / xy): '{layer.name}' {why}: set alpha here (or press Use this alpha to keep {alpha:g}), or "
        "set the layer's z scale to alpha x its xy voxel; niiv does not run until then"
    )


@dataclass(frozen=True)
class WeightsFacts:
    """What the dock's note says of weights, read from their file's header only: the alphas they
    were trained over (their card's range, else their one alpha), the sections they learned (their
    card's degradations; None: it does not say) and whether they are told the sections (an
    acquisition embedding; else they ignore them)."""

    alphas: tuple[float, float]
    learned: list[str] | None
    told: bool


def weights_facts(name: str) -> WeightsFacts | None:
    """:class:`WeightsFacts` of the weights ``name``; None when they cannot be read."""
    path = available_weights().get(name)
    if path is None:
        return None
    try:
        return _weights_facts(str(path), path.stat().st_mtime_ns)
    except OSError:
        return None


@functools.lru_cache(maxsize=64)
def _weights_facts(path: str, mtime_ns: int) -> WeightsFacts | None:
    try:
        meta = read_metadata(path)
        card = json.loads(meta.get("card") or "{}")
        card = card if isinstance(card, dict) else {}
        lo, hi = card.get("alpha_range") or (meta["alpha"], meta["alpha"])
        learned = card.get("degradations")
        config = json.loads(meta.get("config") or "{}")
        told = bool(config.get("acquisition_embedding")) if isinstance(config, dict) else False
        return WeightsFacts((float(lo), float(hi)), learned if isinstance(learned, list) else None, told)
    except (NiivInputError, ValueError, TypeError, KeyError, OSError):
        return None


class NiivWidget(QScrollArea):
    """Settings for niiv and the live isotropic view of the visible region."""

    _lazy_ready = Signal(object)  # a prepared whole-volume layer, or the error that stopped it

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        keep_triton_out_without_cuda()  # before any torch work in this (OpenGL) process
        register_layer_context_action()
        self.viewer = viewer = napari_viewer
        self.volume_choice = ComboBox(label="volume", choices=self._image_layers, nullable=True)
        self.alpha_spin = FloatSpinBox(
            label="alpha (z / xy)", min=ALPHA_RANGE[0], max=ALPHA_RANGE[1], step=0.5, value=8.0
        )
        self.alpha_spin.native.setDecimals(3)  # the alpha read from a layer's scale is kept to 3 (Qt shows 2)
        self.confirm_alpha_button = PushButton(text="Use this alpha", visible=False)
        self.sections_choice = ComboBox(label="sections", choices=SECTIONS, value="thick")
        # psf only: the axial blur's width; 0 is one section spacing (data.degrade's default)
        self.fwhm_spin = FloatSpinBox(label="psf FWHM (xy px)", min=0.0, max=200.0, step=0.5, value=0.0, visible=False)
        self.scale_spin = FloatSpinBox(label="output scale", min=0.5, max=2.0, step=0.25, value=1.0)
        self.weights_choice = ComboBox(label="weights", choices=weight_choices, value=DEFAULT_WEIGHTS)
        self.weights_note = Label(label="", value="")  # why these weights were preselected
        self.weights_note.native.setWordWrap(True)  # a long reason wraps instead of widening the dock
        self.device_choice = ComboBox(label="device", choices=available_devices(), value="auto")
        self.precision_choice = ComboBox(label="precision", choices=PRECISIONS, value="auto")
        self.orientation_choice = ComboBox(label="orientation", choices=ORIENTATIONS, value="auto")
        self.live_check = CheckBox(text="live niiv view of the visible region", value=False)
        self.confidence_check = CheckBox(text="confidence map (where xz and yz disagree)", value=False)
        self.fast_check = CheckBox(text=f"{FAST_WEIGHTS} first on a CPU", value=True)
        self.reconstruct_button = PushButton(text="Whole volume (lazy layer)")
        self.save_button = PushButton(text="Save isotropic volume...")
        self.help_button = PushButton(text="?")
        self.help_button.native.setFixedWidth(32)
        self.status_label = status_label()
        self.form = Container(
            widgets=[
                self.volume_choice,
                self.alpha_spin,
                self.confirm_alpha_button,
                self.sections_choice,
                self.fwhm_spin,
                self.scale_spin,
                self.weights_choice,
                self.weights_note,
                self.device_choice,
                self.precision_choice,
                self.orientation_choice,
                self.live_check,
                self.fast_check,
                self.confidence_check,
            ],
            labels=True,
        )
        self.form.margins = (0, 0, 0, 0)
        buttons = Container(
            widgets=[self.reconstruct_button, self.save_button, self.help_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        self.activity_bar = ActivityBar(self.activities)
        from .training_panel import TrainingPanel

        self.training = TrainingPanel(viewer, self)
        self.training.margins = (0, 0, 0, 0)
        heading = QLabel("<b>Fine-tune on this volume</b>")
        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)

        inner = QWidget()
        layout = QVBoxLayout(inner)
        layout.setContentsMargins(6, 4, 6, 4)
        for w in (
            self.form.native,
            buttons.native,
            self.status_label.native,
            self.activity_bar,
            line,
            heading,
            self.training.native,
        ):
            layout.addWidget(w)
        layout.addStretch(1)
        self._inner, self._buttons, self._heading = inner, buttons, heading
        self.setWidget(inner)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setMaximumWidth(MAX_WIDTH)
        self.tooltips()

        self.live_view: LiveView | None = None
        self.saver: BackgroundSave | None = None
        self.last_save: BackgroundSave | None = None
        self.save_chunks: tuple[int, int, int] = DEFAULT_CHUNKS
        # The alpha the user gave each layer (changed the alpha box or pressed Use this alpha), shown
        # again when the layer is chosen again, until its scale changes: a layer with the same scale
        # on z and x/y says nothing about its anisotropy, and niiv does not run on it at a made-up alpha.
        self._confirmed: weakref.WeakKeyDictionary[Image, float] = weakref.WeakKeyDictionary()
        self._setting_alpha = False  # the alpha box is being set from the layer's scale, not by the user
        self._watched: Image | None = None  # the layer whose scale, units... events are connected
        # The volume whose live view was paused because it became one niiv cannot take (a rotation,
        # a flip, mixed units set while live): live goes on when it is fixed (_layer_changed)
        self._resume_live: Image | None = None
        self._pausing = False  # the live box is being unticked for that pause, not by the user
        self._refusal: str | None = None  # why the chosen volume cannot be taken, as the status said it
        self._syncing = False  # confidence layers are being added or removed (_sync_confidence)
        # Weights the user picked, per volume (kept for it: preselection then only suggests in the note).
        self._picked_weights: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._setting_weights = False  # the weights are being preselected, not picked by the user
        self._weights_why = ""  # why these weights (the note below the list, before its alpha warning)
        self._volume_picked = False  # the user chose the volume (else it follows new layers: _layers_changed)
        self._setting_volume = False
        self._picked_sections = False  # the user picked the sections (from then on they stay)
        self.weights_choice.changed.connect(self._weights_edited)
        self.weights_choice.changed.connect(self._default_sections)
        self.sections_choice.changed.connect(self._sections_edited)
        self.sections_choice.changed.connect(self._show_fwhm)
        self.fwhm_spin.changed.connect(self._sections_edited)
        for w in (self.sections_choice, self.fwhm_spin):  # sections or a width the weights never learned
            w.changed.connect(self._show_weights_note)
        self.volume_choice.changed.connect(self._volume_edited)
        self.volume_choice.changed.connect(self._layer_changed)
        self.alpha_spin.changed.connect(self._alpha_edited)
        self.alpha_spin.changed.connect(self._show_weights_note)
        self.confirm_alpha_button.changed.connect(self.confirm_alpha)
        settings = (self.alpha_spin, self.scale_spin, self.weights_choice, self.device_choice, self.precision_choice)
        for w in (*settings, self.orientation_choice, self.sections_choice, self.fwhm_spin):
            w.changed.connect(self._settings_changed)
        self.live_check.changed.connect(self._toggle_live)
        self.confidence_check.changed.connect(self._toggle_confidence)
        self.fast_check.changed.connect(self._toggle_fast)
        self.reconstruct_button.changed.connect(self._reconstruct_whole)
        self.preparing = 0  # whole-volume layers being prepared on a thread
        self._lazy_ready.connect(self._lazy_prepared)
        self.save_button.changed.connect(self.save_isotropic)
        self.help_button.changed.connect(self.open_help)
        viewer.layers.events.inserted.connect(self._layers_changed)
        viewer.layers.events.removed.connect(self._layers_changed)
        # The viewer closed: stop background work. Not a bound method of this widget, whose Qt side
        # is being deleted when the signal fires. (The dock's own close button: see event.)
        self.destroyed.connect(functools.partial(NiivWidget.close_live, self))
        self._docked = False  # in a dock (napari's close button takes it out: event)
        memory = dock_memory.recall(viewer)
        if memory is not None:
            dock_memory.restore_choices(self, memory)
        self._layers_changed()
        self._default_sections()
        if memory is not None:
            dock_memory.restore_values(self, memory)

    def event(self, e: QEvent) -> bool:
        """napari's close button on the dock (``remove_dock_widget``) takes this widget out of its
        dock and deletes the dock, not the widget: without this its live view, training and save
        would go on computing for a dock no one sees, and a reopened dock would be a second one."""
        if e.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif getattr(self, "_docked", False):  # (events can come before __init__ sets it)
                self._docked = False
                dock_memory.remember(self)  # for the next dock opened in this viewer
                self.close_live(wait_for_save=False)
                self._disconnect_viewer()
                self.deleteLater()
        return super().event(e)

    def _disconnect_viewer(self) -> None:
        """Stop listening to the viewer's layers (napari would call a deleted widget)."""
        self.viewer.layers.events.inserted.disconnect(self._layers_changed)
        self.viewer.layers.events.removed.disconnect(self._layers_changed)
        self._watch(None)
        self.training.disconnect_viewer()

    def minimumSizeHint(self) -> QSize:
        """As wide as the controls need beside a vertical scroll bar (a scroll area alone asks for
        almost nothing, and the dock would then cut the controls off)."""
        hint = super().minimumSizeHint()
        inner = self.widget().minimumSizeHint().width()
        hint.setWidth(min(MAX_WIDTH, inner + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()))
        return hint

    def sizeHint(self) -> QSize:
        hint = self.minimumSizeHint()
        hint.setHeight(self.widget().sizeHint().height())
        return hint

    def tooltips(self) -> None:
        self.volume_choice.tooltip = (
            "The 3D image layer (one channel; z, y, x) to reconstruct; its z scale over its xy scale gives alpha."
        )
        self.alpha_spin.tooltip = "How many times coarser z is than x/y; read from the layer's scale."
        self.confirm_alpha_button.tooltip = (
            "The layer's scale does not say how coarse z is: run niiv on it at the alpha shown above"
        )
        self.sections_choice.tooltip = (
            "How this microscope's sections relate to its xy planes: thick for serial-section EM or FIB-SEM "
            "(each section averages its thickness), thin for thin sections far apart, psf for light microscopy "
            "(a Gaussian axial blur, as wide as the psf FWHM below). Weights with an acquisition embedding "
            "(niiv-em) are told it; fine-tuning simulates it. Follows the weights until you pick it."
        )
        self.fwhm_spin.tooltip = (
            "psf: the axial blur's full width at half maximum in xy voxels (your microscope's axial resolution "
            "over its xy voxel size); 0: one section spacing (alpha). Fine-tuning simulates it; weights told the "
            "sections (niiv-em) are given it; others (niiv-lm) reconstruct as the width they learned, and the note "
            "above says when that differs: fine-tune them with this width."
        )
        self.scale_spin.tooltip = "Output voxel in in-plane voxels: 1 isotropic, 0.5 twice finer, 2 coarser."
        self.weights_choice.tooltip = (
            "Trained weights: the shipped ones first, then yours (user/..., from fine-tuning below or niiv train)."
        )
        self.device_choice.tooltip = "Where niiv runs: auto picks a CUDA GPU, then Apple MPS, then the CPU."
        self.precision_choice.tooltip = (
            "auto: bf16 where the CPU/GPU has it (about 1/1000 dB from fp32, faster); fp32: exact, slower."
        )
        self.orientation_choice.tooltip = "Slices niiv decodes: auto follows the view (xy views use xz slices)."
        self.live_check.tooltip = "Reconstruct what is on screen, at screen resolution, as you pan, zoom and scroll."
        self.fast_check.tooltip = (
            f"On a CPU, show the small {FAST_WEIGHTS} model's image of each view first (3.5 % of v2's "
            "arithmetic), then the chosen weights' over it; the status line says which is shown. Whole-volume "
            "layers made while it is ticked use it for their 3D and zoomed-out views (a save always uses the "
            "chosen weights). Only for the sections it learned (thick and thin: electron microscopy), not for psf "
            "(light microscopy)."
        )
        self.confidence_check.tooltip = (
            "Add a layer over the live view and each whole-volume layer showing where niiv is unsure: how much "
            "the reconstructions from xz and from yz slices differ (bright = unsure). Costs up to one more decoding."
        )
        self.reconstruct_button.tooltip = (
            "Add the whole isotropic volume as a lazy layer: napari asks for the tiles it shows and they are "
            "computed in the background (also in Layers > Transform > niiv)."
        )
        self.save_button.tooltip = (
            "Write the whole reconstruction with these settings as OME-Zarr, in the background with progress, "
            "ETA and Cancel; a cancelled or failed save continues when you save to the same path again."
        )
        self.help_button.tooltip = f"Open the napari-niiv guide in your browser ({GUIDE_URL})"
        self.status_label.tooltip = "What niiv did last, or what to change"

    # -- layers --------------------------------------------------------------------------------
    def reset_choices(self, event: Any = None) -> None:
        """Refresh every layer and weights list (napari calls this when layers change, as it does
        for magicgui widgets). A renamed volume stays chosen: the list matches its entries by their
        text, and fell back to none (the next setting then stopped live, 'no layer selected')."""
        chosen = self.volume_choice.value
        with self.volume_choice.changed.blocked():
            self.form.reset_choices()
            if chosen is not None and self.volume_choice.value is not chosen and chosen in self._image_layers():
                self.volume_choice.value = chosen
        if self.volume_choice.value is not chosen:
            self.volume_choice.changed.emit(self.volume_choice.value)
        self.training.reset_choices()

    def _image_layers(self, widget: Any = None) -> list[Image]:
        """The volumes niiv can take: 3D+ single-channel images, not the plugin's own outputs (the
        live layer, lazy isotropic layers)."""
        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Image) and layer.ndim >= 3 and not layer.rgb and not is_niiv_output(layer)
        ]

    def _say_why_no_volume(self) -> None:
        """When layers are open but none can be offered (2D, RGB, Labels...), say why of each in
        check_layer's words (an empty list said nothing); the words go once a volume is offered."""
        others = [layer for layer in self.viewer.layers if not is_niiv_output(layer)]
        current = str(self.status_label.value)
        kept = "" if current.startswith(NO_VOLUME) else current.split("\n" + NO_VOLUME)[0]  # (live view off...)
        if self._image_layers() or not others:
            if NO_VOLUME in current:
                self.set_status(kept)
            return
        reasons = []
        for layer in others:
            try:
                check_layer(layer)
            except NiivInputError as exc:
                reasons.append(str(exc))
        shown = reasons[:NO_VOLUME_REASONS]
        if len(reasons) > len(shown):
            shown.append(f"and {len(reasons) - len(shown)} more")
        self.set_status(
            "\n".join([*([kept] if kept else []), f"{NO_VOLUME} (File > Open, or File > Open Sample > niiv):", *shown])
        )

    @gui_handler
    def _layers_changed(self, event: Any = None) -> None:
        removed = event.value if event is not None and getattr(event, "type", None) == "removed" else None
        if removed is not None:
            self._layer_removed(removed)
        elif event is not None and self.confidence_check.value:
            self._sync_confidence()  # a new whole-volume layer (dock or menu) gets its map
        self._setting_volume = True  # a removed layer's entry goes: not the user's choice
        try:
            self.volume_choice.reset_choices()
        finally:
            self._setting_volume = False
        if self.volume_choice.value is None:  # the user's volume was closed: offer one again
            self._volume_picked = False
        self.weights_choice.reset_choices()
        layers = self._image_layers()
        follow = not self._volume_picked and self.live_view is None  # never moves a running live view
        if layers and (self.volume_choice.value is None or follow):
            added = event.value if event is not None and removed is None else None
            pick = self._default_volume(layers, added)
            if pick is not self.volume_choice.value:
                self._setting_volume = True
                try:
                    self.volume_choice.value = pick
                finally:
                    self._setting_volume = False
        self._say_why_no_volume()

    def _volume_edited(self, layer: Image | None) -> None:
        if not self._setting_volume:
            self._volume_picked = layer is not None

    def _default_volume(self, layers: list[Image], added: Any = None) -> Image:
        """The volume to offer until the user picks one: a layer just added, else the active one, if
        niiv can take it and it is shown; else the topmost shown one (a sample's ground truth is
        added hidden)."""
        for layer in (added, self.viewer.layers.selection.active):
            if layer in layers and layer.visible:
                return layer
        return next((layer for layer in reversed(layers) if layer.visible), layers[-1])

    @gui_handler
    def _layer_removed(self, layer: Any) -> None:
        """A removed layer is no longer named in the status line, its live view is off and its live
        layers go with it."""
        remove_live_layers(self.viewer, layer, now=False)  # inside napari's removal
        if self.live_view is not None and self.live_view.layer is layer:
            self._stop_live()
            self.live_check.value = False
            self.set_status("live view off: its volume was closed; pick a volume and tick live again")
        elif f"'{layer.name}'" in str(self.status_label.value):
            self.set_status("")
        if layer is self._watched:
            self._watch(None)
        if layer is self._resume_live:
            self._resume_live = None

    def _watched_events(self, layer: Image) -> list[tuple[Any, Any]]:
        """What the dock shows of a layer comes from its voxel sizes (scale and a diagonal affine:
        alpha), its units (the weights and their note) and whether niiv can take it at all
        (rotate, shear, affine, units: check_layer). Its translate changes none of it."""
        e = layer.events
        return [
            (e.scale, self._scale_changed),
            (e.affine, self._scale_changed),
            (e.units, self._placement_changed),
            (e.rotate, self._placement_changed),
            (e.shear, self._placement_changed),
        ]

    def _watch(self, layer: Image | None) -> None:
        """Follow the layer's voxel sizes, units and placement (:meth:`_watched_events`)."""
        if self._watched is not None:
            for emitter, callback in self._watched_events(self._watched):
                emitter.disconnect(callback)
        self._watched = layer
        if layer is not None:
            for emitter, callback in self._watched_events(layer):
                emitter.connect(callback)

    @gui_handler
    def _scale_changed(self, event: Any = None) -> None:
        """The layer's voxel sizes changed: alpha follows them (an alpha confirmed for the old
        scale no longer stands)."""
        layer = self.volume_choice.value
        if layer is not None:
            self._confirmed.pop(layer, None)
            self._layer_changed(layer)

    @gui_handler
    def _placement_changed(self, event: Any = None) -> None:
        """The layer's units, rotation or shear changed: whether niiv can take it, and the weights
        for its unit (an alpha the user gave still stands: the voxel sizes did not change)."""
        layer = self.volume_choice.value
        if layer is not None:
            self._layer_changed(layer)

    @gui_handler
    def _layer_changed(self, layer: Image | None) -> None:
        self._watch(layer)
        if layer is not self._resume_live:  # another volume: the paused one's live view does not come back
            self._resume_live = None
        if layer is None:
            self.confirm_alpha_button.visible = False
            return
        try:
            self.volume()  # a flip, a rotation, 4D...: said at once, not as an odd alpha
        except NiivInputError as exc:
            self.confirm_alpha_button.visible = False
            self._refusal = str(exc)
            if self.live_view is not None and self.live_view.layer is layer:
                self._pause_live(layer, str(exc))
            else:
                self.set_status(str(exc))
                self._settings_changed()  # a live view stops here, with the same message
            return
        refused, self._refusal = self._refusal, None
        if refused and refused in str(self.status_label.value):  # the layer was fixed: that no longer holds
            self.set_status(f"'{layer.name}' is a volume niiv can take again")
        self._preselect_weights(layer)
        alpha = scale_alpha(layer)
        unknown = self.alpha_unknown(layer)
        self.confirm_alpha_button.visible = unknown
        if unknown:
            self.set_status(alpha_unknown_message(layer, self.alpha_spin.value))
        else:
            given = self._confirmed.get(layer)  # the user's alpha for this layer, else its scale's
            self._setting_alpha = True
            try:
                self.alpha_spin.value = round(given if given is not None else alpha, 3)
            finally:
                self._setting_alpha = False
            if given is not None:
                self._say_alpha_set_by_user(layer)
            elif str(self.status_label.value).startswith("alpha (z / xy)"):  # an alpha warning no longer holds
                self.set_status(f"alpha (z / xy): {self.alpha_spin.value:g}, from the scale of '{layer.name}'")
        if self._resume_live is layer and not self.live_check.value:
            self._resume_live = None
            self.live_check.value = True  # the layer was fixed: its live view goes on (or says why not)
            return
        self._settings_changed()

    def _pause_live(self, layer: Image, why: str) -> None:
        """The live view's volume became one niiv cannot take: stop it, remove its live layers
        (their images sit on the old grid, not where the changed layer is), say why in check_layer's
        words and go on when the layer is fixed (:meth:`_layer_changed`)."""
        self._stop_live()
        remove_live_layers(self.viewer, layer)
        self._pausing = True
        try:
            self.live_check.value = False
        finally:
            self._pausing = False
        self._resume_live = layer
        self.set_status(paused_status(why, layer.name))

    # -- weights -------------------------------------------------------------------------------
    def _preselect_weights(self, layer: Image) -> None:
        """Weights for what is known of ``layer`` (voxel size and unit, else pixel type), with the
        reason below the list. Weights the user picked for this volume stay picked for it: the note
        then only suggests others when they would suit it better."""
        s = suggest_weights(layer_voxel_size(layer), layer_unit(layer), layer.dtype)
        available = s.weights in self.weights_choice.choices
        picked = self._picked_weights.get(layer)
        if picked is not None and picked in self.weights_choice.choices:
            self._set_weights(picked)
            self._weights_why = self._your_choice(layer, picked)
        elif available:
            self._set_weights(s.weights)
            self._weights_why = f"{s.weights}: {s.reason}"
        else:
            self._weights_why = ""
        self._show_weights_note()

    @gui_handler
    def _show_weights_note(self, value: Any = None) -> None:
        """The note below the weights: why they were chosen and, when the alpha shown lies outside
        the alphas they were trained over, that (the CLI notes it too)."""
        name, alpha = str(self.weights_choice.value), float(self.alpha_spin.value)
        facts = weights_facts(name)
        note = alpha_fit_note(facts.alphas if facts else None, alpha)
        warnings = [f"{name} was {note}" if note else ""]
        try:
            sections = sections_fit_note(facts.learned, facts.told, self.degradation(), alpha) if facts else None
        except NiivInputError:  # a psf width the settings refuse: said when niiv runs
            sections = None
        if sections:
            warnings.append(f"{name} {sections}")
        self.weights_note.value = ". ".join(part for part in (self._weights_why, *warnings) if part)

    def _set_weights(self, name: str) -> None:
        """Show ``name`` in the list as the widget's own choice, not the user's pick."""
        self._setting_weights = True
        try:
            self.weights_choice.value = name
        finally:
            self._setting_weights = False

    @gui_handler
    def _weights_edited(self, value: Any = None) -> None:
        layer = self.volume_choice.value
        if not self._setting_weights:
            if layer is not None:
                self._picked_weights[layer] = self.weights_choice.value
            self._weights_why = self._your_choice(layer, str(self.weights_choice.value)) if layer is not None else ""
        self._show_weights_note()

    def _your_choice(self, layer: Image, picked: str) -> str:
        """The note for weights the user picked for ``layer``: with the suggested ones when they
        would suit it better (picking niiv-em for a confocal stack said only 'your choice')."""
        s = suggest_weights(layer_voxel_size(layer), layer_unit(layer), layer.dtype)
        better = s.weights in self.weights_choice.choices and s.weights != picked
        return f"{picked}: your choice" + (f"; {s.weights} suits '{layer.name}' ({s.reason})" if better else "")

    @gui_handler
    def _default_sections(self, value: Any = None) -> None:
        """The sections the chosen weights learned first (niiv-lm: psf), until the user picks them.
        Set silently: the weights' own change already restarts the live view with them, and only
        the user's edits count as picks."""
        if not self._picked_sections:
            with self.sections_choice.changed.blocked():
                self.sections_choice.value = learned_degradation(self.weights_choice.value)
            self._show_fwhm()
            self._show_weights_note()  # it was written for the sections before these

    def _sections_edited(self, value: Any = None) -> None:
        self._picked_sections = True

    def _show_fwhm(self, value: Any = None) -> None:
        self.fwhm_spin.visible = self.sections_choice.value == "psf"

    def degradation(self) -> str:
        """The sections as ``data.degrade`` spells them: ``psf:FWHM`` when a psf width is given."""
        kind, fwhm = self.sections_choice.value, float(self.fwhm_spin.value)
        return f"psf:{fwhm:g}" if kind == "psf" and fwhm > 0 else kind

    # -- alpha ---------------------------------------------------------------------------------
    def alpha_unknown(self, layer: Any) -> bool:
        """True when ``layer``'s scale gives no usable anisotropy (none, or outside ``ALPHA_RANGE``)
        and the user has not confirmed an alpha."""
        return isinstance(layer, Image) and scale_alpha(layer) is None and layer not in self._confirmed

    @gui_handler
    def _alpha_edited(self, value: Any = None) -> None:
        layer = self.volume_choice.value
        if not self._setting_alpha and isinstance(layer, Image):
            self._confirmed[layer] = float(self.alpha_spin.value)
            self.confirm_alpha_button.visible = False
            if str(self.status_label.value).startswith("alpha (z / xy)"):  # the waiting message no longer holds
                self._say_alpha_set_by_user(layer)

    def _say_alpha_set_by_user(self, layer: Image) -> None:
        self.set_status(f"alpha (z / xy): {self.alpha_spin.value:g}, as you set it for '{layer.name}'")

    @gui_handler
    def confirm_alpha(self, value: Any = None) -> None:
        """The user keeps the alpha shown for a layer whose scale does not give one."""
        layer = self.volume_choice.value
        if isinstance(layer, Image):
            self._confirmed[layer] = float(self.alpha_spin.value)
            self.confirm_alpha_button.visible = False
            self.set_status(f"alpha (z / xy): {self.alpha_spin.value:g} for '{layer.name}'")

    def alpha(self) -> float:
        """The alpha to run at (a NiivInputError says why not: out of range, or unconfirmed for a
        layer whose scale does not give it)."""
        layer = self.volume_choice.value
        if self.alpha_unknown(layer):
            raise NiivInputError(alpha_unknown_message(layer, self.alpha_spin.value))
        return named("alpha (z / xy)", lambda: check_alpha(self.alpha_spin.value))

    def set_status(self, text: str) -> None:
        self.status_label.value = text

    # -- settings ------------------------------------------------------------------------------
    def settings(self) -> InferenceSettings:
        """What the controls say, validated (a NiivInputError starts with the control to change)."""
        return InferenceSettings(
            alpha=self.alpha(),
            scale=named("output scale", lambda: check_scale(self.scale_spin.value)),
            orientation=self.orientation_choice.value,
            device=self.device_choice.value,
            precision=self.precision_choice.value,
            degradation=self.degradation(),
        )

    def runnable_settings(self) -> InferenceSettings:
        """:meth:`settings` that this machine can run: a missing GPU or precision is reported now."""
        settings = self.settings()
        named("device", lambda: pick_device(settings.device))
        named("precision", settings.resolved)
        return settings

    def weights_path(self) -> Path:
        """The chosen weights' file (a NiivInputError when it has gone): cheap, no reading."""
        name = self.weights_choice.value
        path = available_weights().get(name)
        if path is None:
            raise NiivInputError(f"weights: '{name}' is no longer in the weights folders; pick another")
        return path

    def weights(self) -> Weights:
        path = self.weights_path()
        return named("weights", lambda: load_weights(path))

    def volume(self) -> Image:
        return named("volume", lambda: check_layer(self.volume_choice.value))

    # -- help ----------------------------------------------------------------------------------
    def help_url(self) -> QUrl:
        return QUrl(GUIDE_URL)

    def open_help(self, value: Any = None) -> bool:
        """Open the napari guide in the browser (QDesktopServices: Qt's URL handlers decide)."""
        return bool(QDesktopServices.openUrl(self.help_url()))

    # -- live ----------------------------------------------------------------------------------
    @gui_handler
    def _settings_changed(self, value: Any = None) -> None:
        if self.live_check.value:
            self._start_live()

    @gui_handler
    def _toggle_live(self, on: bool) -> None:
        if not self._pausing:  # the user's tick: a paused live view is the user's to restart now
            self._resume_live = None
        if on:
            self._start_live()
        elif self.live_view is not None:
            self._stop_live()
            self.set_status("live view off")

    def _start_live(self) -> None:
        self._stop_live()
        try:
            layer = self.volume()
            settings = self.runnable_settings()
            path = self.weights_path()
        except NiivInputError as exc:
            self.live_check.value = False
            self.set_status(str(exc))
            return
        view = LiveView(
            self.viewer,
            layer,
            lambda: named("weights", lambda: load_weights(path)).model,  # read on the live view's thread
            settings,
            on_status=lambda text: self._live_status(view, text),
            pixel_ratio=self._pixel_ratio(),
            confidence=self.confidence_check.value,
            fast_model=self._fast_model(settings),
            names=(str(self.weights_choice.value), FAST_WEIGHTS),
        )
        view.set_fast_first(self.fast_check.value)
        self.live_view = view

    def _fast_model(self, settings: InferenceSettings) -> Any:
        """A loader of niiv-fast for the live view's first frame (it runs on the live view's thread):
        on a CPU, when it is shipped, is not the chosen weights already and learned the settings'
        sections (:func:`~napari_niiv.inference.weights.fast_weights`); None otherwise. A
        damaged file is logged and the view shows the chosen weights only."""
        path = fast_weights(self.weights_choice.value, pick_device(settings.device).type, settings.sections)
        if path is None:
            return None

        def load() -> Any:
            try:
                return load_weights(path).model
            except NiivInputError as exc:
                log.warning("%s: %s; the live view shows the chosen weights only", FAST_WEIGHTS, exc)
                return None

        return load

    @gui_handler
    def _toggle_fast(self, on: bool) -> None:
        """From the next view: the view shown ends in the chosen weights' image either way, so it is
        not computed again (it re-ran to the same image)."""
        if self.live_view is not None:
            self.live_view.set_fast_first(on)

    def _live_status(self, view: LiveView, text: str) -> None:
        """A live view's news, unless it has been replaced or stopped (its last word would
        overwrite a newer message)."""
        if view is not self.live_view:
            return
        if view.cannot_start:
            self.live_check.value = False  # the volume itself cannot be shown live: the box says so
        self.set_status(text)

    def _stop_live(self, wait: bool = False) -> None:
        """Close the live view; the GUI thread waits for its thread to end only with ``wait``."""
        if self.live_view is not None:
            self.live_view.close(wait)
            self.live_view = None

    def _pixel_ratio(self) -> float:
        return float(self.devicePixelRatioF()) if hasattr(self, "devicePixelRatioF") else 1.0

    # -- confidence map ------------------------------------------------------------------------
    @gui_handler
    def _toggle_confidence(self, on: bool) -> None:
        self._sync_confidence()
        if on and self.live_view is None and not self._lazy_layers():
            self.set_status(
                "confidence map: on; it appears with the live view or a whole-volume layer (bright = niiv is unsure)"
            )
        elif on:  # (with only whole-volume layers, an earlier 'confidence map off' stayed, the box ticked)
            self.set_status("confidence map: on; computed over niiv's layers (bright = niiv is unsure)")
        else:
            self.set_status("confidence map off")

    def _lazy_layers(self) -> list[Image]:
        """Whole-volume niiv layers whose tiles are still computed."""
        return [layer for layer in self.viewer.layers if getattr(layer, "_niiv_progress", None) is not None]

    def _sync_confidence(self) -> None:
        """Confidence layers for the live view and every whole-volume layer when the box is ticked;
        none (and no map work) when it is not."""
        if self._syncing:  # adding a map layer fires the layers' inserted event
            return
        self._syncing = True
        try:
            on = bool(self.confidence_check.value)
            if self.live_view is not None and self.live_view.confidence != on:
                self.live_view.set_confidence(on)
            for layer in self._lazy_layers():
                bridge = layer._niiv_progress
                if on:
                    bridge.show_confidence()
                else:
                    bridge.hide_confidence()
            if not on:  # maps of live views that ended, or of closed whole-volume layers
                maps = [la for la in self.viewer.layers if "niiv_confidence_of" in (la.metadata or {})]
                remove_layers(self.viewer, maps)
        finally:
            self._syncing = False

    # -- whole volume --------------------------------------------------------------------------
    @gui_handler
    def _reconstruct_whole(self, value: Any = None) -> None:
        """The button: check the controls here, prepare the layer (weights, normalisation) on a
        thread, add it when ready (:meth:`_lazy_prepared`)."""
        from .commands import prepare_isotropic_layer

        try:
            layer, settings = self.volume(), self.runnable_settings()
            self.weights_path()
        except NiivInputError as exc:
            self.set_status(str(exc))
            return
        weights, fast = str(self.weights_choice.value), bool(self.fast_check.value)
        self.preparing += 1
        self.set_status(f"whole volume of '{layer.name}': loading {weights}...")

        def prepare() -> None:
            try:
                self._lazy_ready.emit(prepare_isotropic_layer(layer, settings, weights, fast))
            except Exception as exc:  # reported on the GUI thread
                self._lazy_ready.emit(exc)

        threading.Thread(target=prepare, name="niiv-prepare-layer", daemon=True).start()

    @gui_handler
    def _lazy_prepared(self, result: Any) -> None:
        from .commands import insert_prepared

        self.preparing -= 1
        if isinstance(result, BaseException):
            if not isinstance(result, NiivInputError):
                log.error("preparing the whole-volume layer failed", exc_info=result)
            self.set_status(f"whole volume: {result}")
            return
        out = insert_prepared(self.viewer, result)
        if out is not None:
            self.set_status(f"'{out.name}': tiles are computed as you look at them")

    # -- saving --------------------------------------------------------------------------------
    @gui_handler
    def save_isotropic(self, value: Any = None) -> BackgroundSave | None:
        """The button: ask where, then :meth:`save_to`. No volume, or a setting it cannot run with, is
        said before the dialog: not after the user has picked a folder and typed a name."""
        try:
            layer = self.volume()
            self.runnable_settings()
            self.weights_path()
        except NiivInputError as exc:
            self.set_status(str(exc))
            return None
        path, _ = QFileDialog.getSaveFileName(
            self, "Save isotropic volume as OME-Zarr", str(default_save_path(layer)), "OME-Zarr (*.ome.zarr *.zarr)"
        )
        return self.save_to(path) if path else None

    def save_to(self, path: str | Path) -> BackgroundSave | None:
        """Write the whole reconstruction of the selected volume with the widget's settings to ``path``
        (OME-Zarr) in the background; None, with the reason in the status line, if it cannot start."""
        if self.saver is not None:
            self.set_status("Save isotropic volume...: a save is running; wait for it or cancel it")
            return None
        try:
            layer = self.volume()
            settings = self.runnable_settings()
            model = self.weights().model
            data = level0(layer)
            shape = tuple(int(s) for s in data.shape[-3:])
            named("volume", lambda: check_reconstructable(shape, model, settings.volume_orientation))
            out = as_store_path(path)
            source = layer_source(layer)
            if source:
                named("Save isotropic volume...", lambda: check_outside_input(out, source))
            if not out.parent.is_dir():
                what = "is a file, not a folder" if out.parent.exists() else "does not exist"
                raise NiivInputError(f"Save isotropic volume...: the folder {out.parent} {what}; pick another")
            if out.exists() or out.is_symlink():  # a link to nothing is there too
                raise NiivInputError(
                    f"Save isotropic volume...: {out} already exists; niiv never replaces a store: choose another name"
                )
            named("Save isotropic volume...", lambda: check_writable(out))
            geometry = store_geometry(layer, settings)  # a typed alpha's: as niiv reconstruct writes
        except NiivInputError as exc:
            self.set_status(str(exc))
            return None
        dtype = data.dtype if np.dtype(data.dtype).kind in "ui" else np.float32
        origin = source if source and "://" not in source else None
        input_id = described_source(layer) or "a napari layer"
        limits = (float(layer.contrast_limits[0]), float(layer.contrast_limits[1]))  # written as the window
        job = SaveJob(out, data, model, settings, geometry, dtype, input_id, self.save_chunks, origin, limits)
        saver = self.saver = BackgroundSave(job, layer.name, self.set_status, self._save_done)
        self.save_button.enabled = False
        try:
            saver.start()  # after self.saver is set: _save_done may come before this returns
        except Exception as exc:  # no thread could start (resources): the dock must not stay "saving"
            if self.saver is saver:
                saver.shutdown(timeout=0)
                self.saver = None
                self.save_button.enabled = True
            self.set_status(f"Save isotropic volume...: the save could not start ({type(exc).__name__}: {exc})")
            return None
        return saver

    def cancel_save(self) -> None:
        if self.saver is not None:
            self.saver.cancel()

    def _save_done(self, saver: BackgroundSave) -> None:
        self.saver, self.last_save = None, saver
        self.save_button.enabled = True

    # -- what runs -----------------------------------------------------------------------------
    def activities(self) -> list[Activity]:
        """What the plugin is doing now, most specific first: saving, fine-tuning, lazy tiles, live."""
        work: list[Activity] = []
        if self.saver is not None:
            work.append(self.saver.activity())
        training = self.training.activity()
        if training is not None:
            work.append(training)
        for layer in self.viewer.layers:
            tiles = getattr(layer, "_niiv_progress", None)
            a = tiles.activity() if tiles is not None else None
            if a is not None:
                work.append(a)
        if self.live_view is not None and self.live_view.busy:
            work.append(Activity(f"live view of '{self.live_view.layer.name}': computing niiv for what is on screen"))
        return work

    def close_live(self, wait_for_save: bool = True) -> None:
        """Stop background work (the viewer is closing or the widget is removed); a save is
        cancelled after its current chunk and stays resumable. ``wait_for_save=False`` (the dock
        closed, the window stays): the window waits neither for that chunk (with niiv-em, a block of
        the default chunks took over the 10 s it waited, all that time frozen) nor for a fine-tuning
        step (3.3 s frozen on a light-microscopy volume), which stop on their own threads."""
        self._stop_live(wait=True)
        self.training.shutdown(timeout=30.0 if wait_for_save else 0.0)
        if self.saver is not None:
            self.saver.shutdown(timeout=10.0 if wait_for_save else 0.0)
