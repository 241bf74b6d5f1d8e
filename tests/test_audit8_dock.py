"""The dock's settings flows and the live confidence map, driven in the real napari viewer (Xvfb):
what the dock shows must be what the boxes say."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
from tests.conftest import open_dock
from tests.test_napari_confidence import maps, wait_stage

pytestmark = pytest.mark.slow  # a napari viewer


def test_a_map_computed_before_the_box_was_unticked_is_not_shown(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    """Unticking the confidence map while a view's map is on its way: the map arrived after the
    untick and was added again (a map layer with the box off, the status line saying 'and its
    confidence map')."""
    viewer = make_napari_viewer()
    viewer.add_image(cremi64, name="cremi", scale=(40, 4, 4))
    widget = open_dock(viewer, "user/tiny")
    viewer.dims.order = (1, 0, 2)  # an xz view
    viewer.reset_view()
    widget.confidence_check.value = True
    widget.live_check.value = True
    wait_stage(qtbot, widget, "confidence")
    live = widget.live_view
    assert len(maps(viewer)) == 1
    live.refresh(force=True)  # a new view with its map, computed on the live view's thread...
    assert live._worker.wait_idle(60)  # ...and waiting in the GUI thread's queue
    widget.confidence_check.value = False  # unticked before it arrives
    qtbot.wait(300)
    assert maps(viewer) == [] and live.confidence_output is None
    assert "confidence map" not in str(widget.status_label.value)
    widget.confidence_check.value = True  # ticked again: the map is back
    qtbot.waitUntil(lambda: len(maps(viewer)) == 1, timeout=60_000)


def test_the_status_line_names_the_weights_shown_with_the_map(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    """After the confidence map, the status line still says which weights the live layer shows
    (it said only 'niiv ... view and its confidence map': with niiv-fast first, which model?)."""
    viewer = make_napari_viewer()
    viewer.add_image(cremi64, name="cremi", scale=(40, 4, 4))
    widget = open_dock(viewer, "user/tiny")
    viewer.dims.order = (1, 0, 2)
    viewer.reset_view()
    widget.confidence_check.value = True
    widget.live_check.value = True
    wait_stage(qtbot, widget, "confidence")
    qtbot.wait(100)
    status = str(widget.status_label.value)
    assert status.startswith("showing user/tiny:") and "confidence map" in status


def test_the_weights_note_says_when_alpha_is_outside_what_the_weights_learned(make_napari_viewer) -> None:
    """A confocal stack of 0.29 um planes and 0.26 um pixels (alpha 1.1) preselects niiv-lm,
    trained for alpha 2 to 8: the CLI notes it, the dock said nothing."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-niiv", "niiv isotropic view")
    lm = viewer.add_image(np.zeros((8, 32, 32), np.uint16), name="confocal", scale=(0.29, 0.26, 0.26), units="um")
    widget.volume_choice.value = lm
    note = str(widget.weights_note.value)
    assert widget.weights_choice.value == "niiv-lm" and "light microscopy" in note
    assert "niiv-lm was trained for alpha 2 to 8, used here at 1.1" in note
    widget.alpha_spin.value = 4  # within the range: no warning, the reason stays
    assert "trained for" not in str(widget.weights_note.value) and "light microscopy" in str(widget.weights_note.value)
    widget.alpha_spin.value = 16
    widget.weights_choice.value = "niiv-em"  # trained for 2 to 12: the note follows the weights
    assert str(widget.weights_note.value) == (
        "niiv-em: your choice; niiv-lm suits 'confocal' (xy voxels of 260 nm: light microscopy). "
        "niiv-em was trained for alpha 2 to 12, used here at 16: expect less than its card says"
    )


def test_the_alpha_the_user_gave_a_volume_is_the_one_it_runs_at_when_chosen_again(make_napari_viewer) -> None:
    """Alpha 10 typed for a volume without voxel sizes, another volume (alpha 8 from its scale)
    chosen, then the first again: the dock said 'alpha 8, as you set it' and ran it at 8."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-niiv", "niiv isotropic view")
    unknown = viewer.add_image(np.zeros((8, 32, 32), np.uint8), name="no-voxel-sizes")
    scaled = viewer.add_image(np.zeros((8, 32, 32), np.uint8), name="a8", scale=(40, 5, 5))
    widget.volume_choice.value = unknown
    widget.alpha_spin.value = 10
    widget.volume_choice.value = scaled
    assert widget.settings().alpha == 8
    widget.volume_choice.value = unknown
    assert (
        widget.settings().alpha == 10
        and widget.status_label.value == "alpha (z / xy): 10, as you set it for 'no-voxel-sizes'"
    )
    # a volume whose scale gives alpha keeps the alpha typed for it too, until its scale changes
    widget.volume_choice.value = scaled
    widget.alpha_spin.value = 7
    widget.volume_choice.value = unknown
    widget.volume_choice.value = scaled
    assert widget.settings().alpha == 7 and "as you set it for 'a8'" in widget.status_label.value
    scaled.scale = (30, 5, 5)
    assert widget.settings().alpha == 6


def test_the_alpha_box_keeps_three_decimals_of_the_layers_scale(make_napari_viewer) -> None:
    """A confocal stack of 0.29 um planes and 0.26 um pixels is alpha 1.115: the box rounded it to
    two decimals, so niiv ran at 1.11 or 1.12 while the dock had read 1.115 from the scale."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-niiv", "niiv isotropic view")
    lm = viewer.add_image(np.zeros((8, 32, 32), np.uint16), name="confocal", scale=(0.29, 0.26, 0.26), units="um")
    widget.volume_choice.value = lm
    assert widget.alpha_spin.value == pytest.approx(1.115, abs=1e-9)
