"""The viewer must never mislead (issue 13), in the real napari viewer under Xvfb: no niiv at a
made-up alpha, errors that stay until the user acts, no stale alpha, status or volume list, and
fine-tuning cards that keep the whole lineage and say why each run ended."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_niiv.inference.weights import read_metadata

pytest.importorskip("napari")
pytestmark = pytest.mark.slow  # a napari viewer each

from tests.conftest import open_dock  # noqa: E402


def asks_to_confirm(widget) -> bool:
    """The Use this alpha button is shown (isHidden: whether or not the dock is on screen)."""
    return not widget.confirm_alpha_button.native.isHidden()


def isotropic_layers(viewer) -> list[str]:
    return [layer.name for layer in viewer.layers if layer.name.endswith("isotropic (niiv)")]


def test_no_niiv_at_a_made_up_alpha_until_the_user_confirms_one(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    viewer = make_napari_viewer()
    iso = viewer.add_image(cremi64, name="no-voxel-sizes")  # scale (1, 1, 1): anisotropy unknown
    widget = open_dock(viewer, "user/tiny")
    viewer.dims.order = (1, 0, 2)  # an xz view
    assert widget.volume_choice.value is iso
    status = widget.status_label.value
    assert "same scale on z and x/y" in status and "set alpha here" in status and "z scale" in status, status
    assert asks_to_confirm(widget)

    widget.live_check.value = True  # refused: live view, lazy layer, save and fine-tuning
    qtbot.wait(300)
    assert not widget.live_check.value and widget.live_view is None
    assert "same scale on z and x/y" in widget.status_label.value, widget.status_label.value
    widget.reconstruct_button.native.click()
    assert isotropic_layers(viewer) == [] and "same scale on z and x/y" in widget.status_label.value
    assert widget.save_to(tiny_user_weights.parent / "out.ome.zarr") is None
    assert not (tiny_user_weights.parent / "out.ome.zarr").exists()
    widget.training.start_button.native.click()
    assert widget.training.job is None and "same scale on z and x/y" in widget.training.status_label.value

    widget.confirm_alpha_button.native.click()  # keep alpha 8 for this layer
    assert not asks_to_confirm(widget) and "8" in widget.status_label.value
    widget.live_check.value = True
    assert widget.live_view is not None and widget.live_view.settings.alpha == 8.0
    qtbot.waitUntil(lambda: bool(widget.live_view.timings) and "niiv" in widget.live_view.timings[-1], timeout=60_000)
    widget.live_check.value = False

    # confirmed per layer: another isotropic layer asks again; typing an alpha confirms it
    other = viewer.add_image(cremi64[:, :, ::-1], name="other")
    widget.volume_choice.value = other
    assert asks_to_confirm(widget) and "'other'" in widget.status_label.value
    widget.reconstruct_button.native.click()
    assert isotropic_layers(viewer) == []
    widget.alpha_spin.value = 10.0
    assert not asks_to_confirm(widget)
    widget.reconstruct_button.native.click()
    qtbot.waitUntil(lambda: widget.preparing == 0, timeout=60_000)  # prepared on a thread
    assert isotropic_layers(viewer) == ["other isotropic (niiv)"], widget.status_label.value
    assert viewer.layers["other isotropic (niiv)"].metadata["niiv"]["settings"]["alpha"] == 10.0

    # the Layers-menu command, which has no alpha box, refuses an isotropic layer outright
    from napari_niiv._napari.commands import add_isotropic_layer
    from napari_niiv.errors import NiivInputError

    with pytest.raises(NiivInputError, match="same scale on z and x/y"):
        add_isotropic_layer(viewer, iso)


def test_setting_the_z_scale_gives_alpha_and_alpha_follows_the_scale(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    viewer = make_napari_viewer()
    layer = viewer.add_image(cremi64, name="cremi")
    widget = open_dock(viewer, "user/tiny")
    assert asks_to_confirm(widget)
    layer.scale = (40, 4, 4)
    assert widget.alpha_spin.value == 10.0 and not asks_to_confirm(widget)
    assert "same scale" not in widget.status_label.value
    widget.live_check.value = True
    assert widget.live_view is not None and widget.live_view.settings.alpha == 10.0
    layer.scale = (20, 4, 4)  # the live view restarts at the new alpha
    assert widget.alpha_spin.value == 5.0 and widget.live_view.settings.alpha == 5.0
    layer.scale = (4, 4, 4)  # isotropic again: niiv stops until an alpha is confirmed
    assert not widget.live_check.value and widget.live_view is None
    assert asks_to_confirm(widget) and "same scale on z and x/y" in widget.status_label.value

    # only the selected layer's scale drives alpha
    layer.scale = (40, 4, 4)
    other = viewer.add_image(cremi64, name="other", scale=(30, 3, 3))
    widget.volume_choice.value = other
    assert widget.alpha_spin.value == 10.0
    layer.scale = (60, 4, 4)
    assert widget.alpha_spin.value == 10.0


def test_an_error_stays_until_the_user_acts(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    viewer = make_napari_viewer()
    stack = viewer.add_image(np.stack([cremi64, cremi64]), name="time-series", scale=(1, 40, 4, 4))
    widget = open_dock(viewer, "user/tiny")
    widget.volume_choice.value = stack
    widget.live_check.value = True
    assert not widget.live_check.value and widget.live_view is None
    message = widget.status_label.value
    assert "'time-series' is 4D" in message and "split" in message, message
    qtbot.wait(500)  # nothing that runs later replaces it
    viewer.add_points(np.zeros((1, 4)), name="points")  # layer changes that are not the user's answer
    assert widget.status_label.value == message

    # a live view that was running and fails on new settings says why, not just "live view off"
    volume = viewer.add_image(cremi64, name="cremi", scale=(40, 4, 4))
    widget.volume_choice.value = volume
    widget.live_check.value = True
    assert widget.live_view is not None
    widget.volume_choice.value = stack  # live view restarts on the new volume and cannot
    assert not widget.live_check.value and widget.live_view is None
    assert "4D" in widget.status_label.value and "live view off" not in widget.status_label.value


def test_the_status_forgets_removed_layers_and_the_volume_list_offers_only_inputs(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    viewer = make_napari_viewer()
    volume = viewer.add_image(cremi64, name="cremi", scale=(40, 4, 4))
    widget = open_dock(viewer, "user/tiny")
    viewer.dims.order = (1, 0, 2)
    widget.live_check.value = True
    qtbot.waitUntil(lambda: any("niiv_live_of" in layer.metadata for layer in viewer.layers), timeout=60_000)
    widget.reconstruct_button.native.click()
    qtbot.waitUntil(lambda: widget.preparing == 0, timeout=60_000)  # prepared on a thread
    assert isotropic_layers(viewer) == ["cremi isotropic (niiv)"], widget.status_label.value
    widget.reset_choices()
    offered = [layer for layer in widget.volume_choice.choices if layer is not None]
    assert offered == [volume], "the plugin's own layers are offered as inputs"

    viewer.layers.remove(volume)  # the live view's volume: live off, and no word of 'cremi'
    qtbot.wait(300)
    assert not widget.live_check.value and widget.live_view is None
    assert "'cremi'" not in widget.status_label.value and "closed" in widget.status_label.value

    iso = viewer.add_image(cremi64, name="flat")
    widget.volume_choice.value = iso
    assert "'flat'" in widget.status_label.value
    viewer.layers.remove(iso)
    assert "'flat'" not in widget.status_label.value


def card_of(path: Path) -> dict:
    return json.loads(read_metadata(path)["card"])


def test_the_card_keeps_the_lineage_across_resumes_and_says_why_each_run_ended(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    viewer = make_napari_viewer()
    viewer.add_image(cremi64, name="cremi", scale=(40, 4, 4))
    widget = open_dock(viewer, "user/tiny")
    panel = widget.training
    panel.steps_spin.value = 5000
    panel.minutes_spin.value = 0.02  # about a second: the time limit ends the run
    panel.name_edit.value = "lineage"
    panel.start_button.native.click()
    assert panel.job is not None, panel.status_label.value
    qtbot.waitUntil(lambda: panel.job is None, timeout=120_000)
    out = tiny_user_weights / "lineage.safetensors"
    assert "time limit of 0.02 min reached at step" in panel.status_label.value, panel.status_label.value
    first = card_of(out)
    assert first["started_from"] == "user/tiny" and first["ended"] == "time limit of 0.02 min reached"
    steps1 = first["steps"]
    assert 0 < steps1 < 5000 and first["runs"] == [{"steps": [0, steps1], "ended": first["ended"]}]
    assert widget.weights_choice.value == "user/lineage"  # what a resume would otherwise record

    panel.minutes_spin.value = 0
    panel.resume_button.native.click()
    assert panel.job is not None, panel.status_label.value
    qtbot.waitUntil(lambda: bool(panel.plot.steps) and panel.plot.steps[-1] >= steps1 + 2, timeout=120_000)
    panel.stop_button.native.click()
    qtbot.waitUntil(lambda: panel.job is None, timeout=120_000)
    assert "stopped at step" in panel.status_label.value, panel.status_label.value
    second = card_of(out)
    assert second["started_from"] == "user/tiny", "the resume forgot the first run's start weights"
    assert second["fine_tuned_from"] == str(tiny_user_weights / "tiny.safetensors")
    steps2 = second["steps"]
    assert second["ended"] == "stopped by the user" and steps2 > steps1
    assert second["runs"] == [
        {"steps": [0, steps1], "ended": "time limit of 0.02 min reached"},
        {"steps": [steps1, steps2], "ended": "stopped by the user"},
    ]
    text = (tiny_user_weights / "lineage.md").read_text()
    assert "started from: user/tiny" in text and f"steps: {steps2} (stopped by the user)" in text
    assert f"run 1: steps 0-{steps1}, time limit" in text and f"run 2: steps {steps1}-{steps2}, stopped by" in text
