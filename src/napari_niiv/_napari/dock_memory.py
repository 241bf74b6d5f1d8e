"""What a closed niiv dock remembers of its viewer for the next one opened there.

napari's close button deletes the dock, and the widget ends its work with it (``NiivWidget.event``);
a dock opened again is a new widget. Without this it started from the defaults: orientation, output
scale, precision, device, the niiv-fast and confidence boxes, the weights and sections picked, the
alphas given for layers whose scale says nothing, the volume chosen and the fine-tuning settings
(a name typed for the weights included). The live view is not remembered: it starts when its box is
ticked, as in a new dock. A save the close stopped is named, with how to continue it. Kept per
viewer, weakly: a closed viewer, and its layers, are not held.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

# The dock's and the training panel's controls whose values are kept as they are
DOCK_CONTROLS = ("scale_spin", "device_choice", "precision_choice", "orientation_choice", "fast_check")
PANEL_CONTROLS = ("region_choice", "steps_spin", "minutes_spin", "lr_edit")


@dataclass
class DockMemory:
    """One closed dock's state; the per-layer parts are weak, as in the widget."""

    values: dict[str, Any]
    panel_values: dict[str, Any]
    confirmed: weakref.WeakKeyDictionary[Any, float]  # alphas given per layer
    picked_weights: weakref.WeakKeyDictionary[Any, str]  # weights picked per layer
    sections: str | None  # the sections (psf:FWHM with a width), when the user picked them
    volume: weakref.ReferenceType[Any] | None  # the volume, when the user picked it
    confidence: bool = False
    shapes: weakref.ReferenceType[Any] | None = field(default=None)  # the boxes layer, when chosen
    name: str | None = None  # the weights' name, when typed (not the one offered)
    save: str | None = None  # where a save the close stopped was writing


_KEPT: weakref.WeakKeyDictionary[Any, DockMemory] = weakref.WeakKeyDictionary()


def remember(widget: Any) -> None:
    """Keep ``widget``'s state for the next dock opened in its viewer."""
    panel = widget.training
    volume = widget.volume_choice.value
    shapes = panel.shapes_choice.value
    _KEPT[widget.viewer] = DockMemory(
        values={name: getattr(widget, name).value for name in DOCK_CONTROLS},
        panel_values={name: getattr(panel, name).value for name in PANEL_CONTROLS},
        confirmed=widget._confirmed,
        picked_weights=widget._picked_weights,
        sections=widget.degradation() if widget._picked_sections else None,
        volume=weakref.ref(volume) if widget._volume_picked and volume is not None else None,
        confidence=bool(widget.confidence_check.value),
        shapes=weakref.ref(shapes) if shapes is not None else None,
        name=panel.name_edit.value if panel.name_edit.value != panel.default_name() else None,
        save=str(widget.saver.job.out) if widget.saver is not None and widget.saver.running else None,
    )


def recall(viewer: Any) -> DockMemory | None:
    """The state the last dock closed in ``viewer`` left, if any."""
    return _KEPT.get(viewer)


def restore_choices(widget: Any, memory: DockMemory) -> None:
    """Before the widget first looks at the layers: the per-layer alphas and weights, and the
    picked sections, so choosing the volume finds them as the closed dock had them."""
    widget._confirmed = memory.confirmed
    widget._picked_weights = memory.picked_weights
    if memory.sections is not None:
        widget._picked_sections = True
        kind, _, fwhm = memory.sections.partition(":")
        with widget.sections_choice.changed.blocked(), widget.fwhm_spin.changed.blocked():
            widget.sections_choice.value = kind
            widget.fwhm_spin.value = float(fwhm or 0)
        widget._show_fwhm()


def restore_values(widget: Any, memory: DockMemory) -> None:
    """After it has: the volume the user picked (if still open), then the plain settings; the
    status says what could not come back, and a save the close stopped."""
    lost = []
    volume = memory.volume() if memory.volume is not None else None
    if volume is not None and volume in widget.volume_choice.choices:
        widget.volume_choice.value = volume  # a user's pick: it stays chosen as new layers come
    elif memory.volume is not None:
        lost.append("the volume picked was closed")
    for name, value in memory.values.items():
        control = getattr(widget, name)
        if value in getattr(control, "choices", (value,)):
            control.value = value
    panel = widget.training
    for name, value in memory.panel_values.items():
        getattr(panel, name).value = value
    shapes = memory.shapes() if memory.shapes is not None else None
    if shapes is not None and shapes in panel.shapes_choice.choices:
        panel.shapes_choice.value = shapes
    elif memory.shapes is not None:
        lost.append("the boxes layer was closed")
    if memory.name is not None:
        panel.name_edit.value = memory.name
    chosen = widget.volume_choice.value
    picked = memory.picked_weights.get(chosen) if chosen is not None else None
    if picked is not None and picked not in widget.weights_choice.choices:
        lost.append(f"the weights picked, {picked}, are gone")
    widget.confidence_check.value = memory.confidence
    stopped = (
        f"closing it stopped the save to {memory.save}: Save isotropic volume... to the same path continues it"
        if memory.save is not None
        else ""
    )
    if widget.alpha_unknown(chosen):  # its alpha question stays first: niiv does not run until it is answered
        if stopped:
            widget.set_status(f"{widget.status_label.value}; the dock {stopped}")
        return
    text = "settings as this viewer's niiv dock had them when it was closed"
    if lost:
        text += f" ({'; '.join(lost)})"
    widget.set_status(f"{text}; {stopped + '; ' if stopped else ''}tick live to start")
