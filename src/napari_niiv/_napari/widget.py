"""The niiv dock widget: pick a volume, weights and device; watch niiv follow the view live."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton
from napari.layers import Image

from ..errors import NiivInputError
from ..inference.devices import available_devices
from ..inference.settings import ORIENTATIONS, PRECISIONS, InferenceSettings
from ..inference.weights import DEFAULT_WEIGHTS, available_weights, load_weights
from .context_menu import register_layer_context_action
from .layer_view import check_layer, layer_alpha
from .live_view import LiveView


def weight_choices(widget: Any = None) -> list[str]:
    """Shipped weights first, then the user's (trained in the viewer or with ``niiv train``)."""
    return [name for name in available_weights() if not name.endswith(".ckpt")]


class NiivWidget(Container):
    """Settings for niiv and the live isotropic view of the visible region."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(labels=True)
        register_layer_context_action()
        self.viewer = viewer = napari_viewer
        self.volume_choice = ComboBox(label="volume", choices=self._image_layers, nullable=True)
        self.alpha_spin = FloatSpinBox(label="alpha (z / xy)", min=1.0, max=20.0, step=0.5, value=8.0)
        self.scale_spin = FloatSpinBox(label="output scale", min=0.5, max=2.0, step=0.25, value=1.0)
        self.weights_choice = ComboBox(label="weights", choices=weight_choices, value=DEFAULT_WEIGHTS)
        self.device_choice = ComboBox(label="device", choices=available_devices(), value="auto")
        self.precision_choice = ComboBox(label="precision", choices=PRECISIONS, value="auto")
        self.orientation_choice = ComboBox(label="orientation", choices=ORIENTATIONS, value="auto")
        self.live_check = CheckBox(text="live niiv view of the visible region", value=False)
        self.reconstruct_button = PushButton(text="Reconstruct whole volume (lazy layer)")
        self.status_label = Label(value="")
        self.status_label.native.setWordWrap(True)
        self.extend(
            [
                self.volume_choice,
                self.alpha_spin,
                self.scale_spin,
                self.weights_choice,
                self.device_choice,
                self.precision_choice,
                self.orientation_choice,
                self.live_check,
                self.reconstruct_button,
                self.status_label,
            ]
        )
        self.tooltips()
        from .training_panel import TrainingPanel

        self.append(Label(value="<b>Fine-tune on this volume</b>"))
        self.training = TrainingPanel(viewer, self)
        self.append(self.training)
        self.native.setMaximumWidth(460)  # leave the canvas the room
        self.live_view: LiveView | None = None
        self.volume_choice.changed.connect(self._layer_changed)
        settings = (self.alpha_spin, self.scale_spin, self.weights_choice, self.device_choice, self.precision_choice)
        for w in (*settings, self.orientation_choice):
            w.changed.connect(self._settings_changed)
        self.live_check.changed.connect(self._toggle_live)
        self.reconstruct_button.changed.connect(self._reconstruct_whole)
        viewer.layers.events.inserted.connect(self._layers_changed)
        viewer.layers.events.removed.connect(self._layers_changed)
        self.native.destroyed.connect(self.close_live)  # the dock or the viewer closed
        self._layers_changed()

    def tooltips(self) -> None:
        self.alpha_spin.tooltip = "How many times coarser z is than x/y; read from the layer's scale."
        self.scale_spin.tooltip = "Output voxel in in-plane voxels: 1 isotropic, 0.5 twice finer, 2 coarser."
        self.precision_choice.tooltip = (
            "auto: bf16 where the CPU/GPU has it (about 1/1000 dB from fp32, faster); fp32: exact, slower."
        )
        self.orientation_choice.tooltip = "Slices niiv decodes: auto follows the view (xy views use xz slices)."
        self.live_check.tooltip = "Reconstruct what is on screen, at screen resolution, as you pan, zoom and scroll."

    def _image_layers(self, widget: Any = None) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image) and layer.ndim >= 3 and not layer.rgb]

    def _layers_changed(self, event: Any = None) -> None:
        self.volume_choice.reset_choices()
        self.weights_choice.reset_choices()
        layers = self._image_layers()
        if self.volume_choice.value is None and layers:
            self.volume_choice.value = layers[0]

    def _layer_changed(self, layer: Image | None) -> None:
        if layer is None:
            return
        alpha = layer_alpha(layer)
        if alpha is None:
            self.set_status(
                f"'{layer.name}' has the same scale on z and x/y: set alpha, and its z scale to alpha x the xy voxel"
            )
        else:
            self.alpha_spin.value = round(alpha, 3)
        self._settings_changed()

    def set_status(self, text: str) -> None:
        self.status_label.value = text

    def settings(self) -> InferenceSettings:
        """What the controls say, validated (a NiivInputError names what to change)."""
        return InferenceSettings(
            alpha=self.alpha_spin.value,
            scale=self.scale_spin.value,
            orientation=self.orientation_choice.value,
            device=self.device_choice.value,
            precision=self.precision_choice.value,
        )

    # -- live ----------------------------------------------------------------------------------
    def _settings_changed(self, value: Any = None) -> None:
        if self.live_check.value:
            self._start_live()

    def _toggle_live(self, on: bool) -> None:
        if on:
            self._start_live()
        else:
            self._stop_live()
            self.set_status("live view off")

    def _start_live(self) -> None:
        previous = self.live_view
        self._stop_live()
        try:
            layer = check_layer(self.volume_choice.value)
            settings = self.settings()
            settings.resolved()  # a missing GPU is reported now
            weights = load_weights(available_weights()[self.weights_choice.value])
        except (NiivInputError, KeyError) as exc:
            self.set_status(str(exc))
            self.live_check.value = False
            return
        self.live_view = LiveView(
            self.viewer, layer, weights.model, settings, on_status=self.set_status, pixel_ratio=self._pixel_ratio()
        )
        if previous is not None and previous.layer is layer:
            self.live_view.output = previous.output  # new settings, same live layer

    def _stop_live(self) -> None:
        if self.live_view is not None:
            self.live_view.close()
            self.live_view = None

    def _pixel_ratio(self) -> float:
        native = self.native
        return float(native.devicePixelRatioF()) if hasattr(native, "devicePixelRatioF") else 1.0

    # -- whole volume --------------------------------------------------------------------------
    def _reconstruct_whole(self, value: Any = None) -> None:
        from .commands import add_isotropic_layer

        try:
            add_isotropic_layer(
                self.viewer, check_layer(self.volume_choice.value), self.settings(), self.weights_choice.value
            )
        except NiivInputError as exc:
            self.set_status(str(exc))

    def close_live(self) -> None:
        """Stop background work (the viewer is closing or the widget is removed)."""
        self._stop_live()
        self.training.shutdown()
