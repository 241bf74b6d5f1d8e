"""The live view's layers in the real napari viewer (Xvfb), as the live-view audit met them: one live
layer per input however often live is turned off and on, shown as the input is shown, gone with
the input; a view left (3D) stops its render; what the whole-volume layer refuses is not shown
live; grid cells that change size are rendered again."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import open_dock
from tests.test_napari_gui import live_xz_view

pytest.importorskip("napari")
pytestmark = pytest.mark.slow  # a napari viewer each


def done(widget, n: int = 1):
    live = widget.live_view
    return lambda: live is not None and len(live.timings) >= n and "niiv" in live.timings[-1] and not live.busy


def live_layers(viewer) -> list:
    return [layer for layer in viewer.layers if "niiv_live_of" in layer.metadata]


def test_live_off_and_on_and_another_volume_and_back_keep_one_live_layer(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    """Each tick after an untick added a live layer under the frozen earlier one, which hid it (the
    status described the new view, the canvas showed the old); switching the dock's volume A -> B
    -> A did the same."""
    viewer = make_napari_viewer()
    widget = live_xz_view(qtbot, viewer, cremi64)
    first = widget.live_view.output
    widget.live_check.value = False
    widget.scale_spin.value = 2.0  # a new output scale: a grid of another size
    widget.live_check.value = True
    qtbot.waitUntil(done(widget), timeout=60_000)
    assert live_layers(viewer) == [first] and widget.live_view.output is first
    assert first.data.shape == widget.live_view._grid.shape  # the new view, in the one layer

    other = viewer.add_image(cremi64[:, :48], name="other", scale=(40, 4, 4))
    widget.volume_choice.value = other
    qtbot.waitUntil(done(widget), timeout=60_000)
    widget.volume_choice.value = viewer.layers["cremi"]
    qtbot.waitUntil(done(widget), timeout=60_000)
    names = sorted(layer.name for layer in live_layers(viewer))
    assert names == ["cremi niiv live", "other niiv live"] and widget.live_view.output is first


def test_the_live_layer_is_shown_as_its_input_is(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    """napari's layer controls show the input (the dock keeps it selected): its contrast limits,
    colour map, gamma and visibility changed nothing on screen, the opaque live layer on top kept
    its own."""
    viewer = make_napari_viewer()
    widget = live_xz_view(qtbot, viewer, cremi64)
    layer, out = viewer.layers["cremi"], widget.live_view.output
    layer.contrast_limits = (110.0, 150.0)
    layer.colormap = "viridis"
    layer.gamma = 0.7
    assert tuple(out.contrast_limits) == (110.0, 150.0) and out.colormap.name == "viridis" and out.gamma == 0.7
    layer.visible = False
    assert not out.visible
    layer.visible = True
    assert out.visible


@pytest.mark.parametrize("live_on", [True, False])
def test_closing_the_input_removes_its_live_layers(qtbot, make_napari_viewer, cremi64, tiny_user_weights, live_on):
    """A live layer left alone without its input shows nothing of use, and napari with software
    OpenGL crashed at the next repaint with a one-plane layer left beside nothing 3D."""
    viewer = make_napari_viewer()
    widget = live_xz_view(qtbot, viewer, cremi64)
    widget.confidence_check.value = True
    qtbot.waitUntil(lambda: widget.live_view.confidence_output is not None, timeout=60_000)
    if not live_on:
        widget.live_check.value = False  # the last image stays, until its input goes
    assert len(viewer.layers) == 3
    viewer.layers.remove("cremi")
    qtbot.waitUntil(lambda: len(viewer.layers) == 0, timeout=10_000)


def test_leaving_the_2d_view_stops_the_render_and_drops_its_results(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    """Switched to 3D mid-render, the old render went on for 19 s, then replaced "2D views only"
    with its status and drew its slice into the 3D scene."""
    viewer = make_napari_viewer()
    widget = live_xz_view(qtbot, viewer, cremi64)
    live = widget.live_view
    gen, grid = live._generation, live._grid
    image = np.zeros(grid.shape, np.float32)
    viewer.dims.ndisplay = 3
    qtbot.waitUntil(lambda: live._grid is None, timeout=10_000)
    assert live._generation > gen and widget.status_label.value == "live view: 2D views only"
    live._on_result(gen, "niiv", (grid, image, 0.0))  # what the old render still sends
    assert widget.status_label.value == "live view: 2D views only"


@pytest.mark.parametrize(
    ("shape", "said"),
    [((1, 64, 64), "the volume has 1 z plane(s)"), ((8, 2, 2), "smaller than the model's receptive field")],
)
def test_the_live_view_refuses_what_the_whole_volume_layer_refuses(
    qtbot, make_napari_viewer, tiny_user_weights, shape, said
):
    """A single plane (niiv between planes that do not exist) and a 2x2 px volume were shown as
    "showing niiv" live, while the whole-volume layer, a save and the CLI refused them."""
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, shape, dtype=np.uint8), name="small", scale=(40, 4, 4))
    widget = open_dock(viewer)
    widget.weights_choice.value = "user/tiny"
    viewer.dims.order = (1, 0, 2)
    widget.live_check.value = True
    qtbot.waitUntil(lambda: not widget.live_check.value, timeout=60_000)
    assert widget.status_label.value.startswith("live view failed: ") and said in widget.status_label.value
    assert not live_layers(viewer)


def test_grid_cells_that_change_size_are_rendered_again(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    """In grid mode the cells are the layers': with layers added the live cell shrank, and the view
    stayed rendered for the old cell (half of it computed for nothing; the reverse left bands
    empty)."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1000, 700)
    viewer.canvas.grid.enabled = True
    widget = live_xz_view(qtbot, viewer, cremi64)
    qtbot.waitUntil(done(widget), timeout=60_000)
    before = widget.live_view._grid.shape
    for k in range(3):
        viewer.add_image(cremi64, name=f"copy {k}", scale=(40, 4, 4), visible=True)
    qtbot.waitUntil(lambda: done(widget)() and widget.live_view._grid.shape != before, timeout=60_000)


def test_renaming_the_volume_keeps_it_chosen_and_live(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    """napari refreshes the dock's lists on a rename; the volume list matched its entries by text,
    emptied, and the next setting stopped live with "no layer selected" although the volume was
    open and shown."""
    viewer = make_napari_viewer()
    widget = live_xz_view(qtbot, viewer, cremi64)
    layer = viewer.layers["cremi"]
    layer.name = "cremi cell 3"
    assert widget.volume_choice.value is layer
    widget.orientation_choice.value = "yz"
    qtbot.waitUntil(done(widget), timeout=60_000)
    assert widget.live_check.value and widget.live_view.layer is layer
    assert widget.status_label.value.startswith("showing user/tiny")


def test_data_edited_in_place_is_normalised_again(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    """``layer.data *= 10; layer.data = layer.data`` (the same array, other values): the live view
    kept the old normalisation and clipped everything above the old maximum (the review)."""
    viewer = make_napari_viewer()
    widget = live_xz_view(qtbot, viewer, cremi64.astype(np.float32))
    layer, live = viewer.layers["cremi"], widget.live_view
    before = live._norm.high
    layer.data *= 10
    layer.data = layer.data
    qtbot.waitUntil(lambda: live._norm is not None and live._norm.high > 5 * before and done(widget)(), timeout=60_000)


def test_a_deleted_live_layer_is_not_kept_alive_by_its_input(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    """The input remembers its live layers for the next live view of it, weakly: one the user
    deleted was held, image and all, as long as the input lived."""
    import gc
    import weakref

    viewer = make_napari_viewer()
    widget = live_xz_view(qtbot, viewer, cremi64)
    live = widget.live_view
    widget.live_check.value = False
    qtbot.waitUntil(lambda: live._worker.stopped, timeout=30_000)  # its thread, done
    gone = weakref.ref(live_layers(viewer)[0])
    viewer.layers.remove(gone())
    qtbot.wait(100)
    gc.collect()
    assert gone() is None


def test_new_data_hides_the_old_datas_live_image_until_its_own_arrives(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    """Replaced by a smaller crop while viewing a row the crop does not have, the live layer kept
    showing niiv of the old data (and held napari's slider there); now it is hidden until the new
    data's first image."""
    viewer = make_napari_viewer()
    widget = live_xz_view(qtbot, viewer, cremi64)
    layer, live = viewer.layers["cremi"], widget.live_view
    viewer.dims.set_point(1, 4 * 50)  # row 50
    qtbot.waitUntil(done(widget, 2), timeout=60_000)
    layer.data = cremi64[:, :32]  # rows 0-31 only
    assert not live.output.visible
    qtbot.waitUntil(lambda: widget.status_label.value == "live view: nothing visible", timeout=10_000)
    assert not live.output.visible
    viewer.dims.set_point(1, 4 * 20)  # a row the new data has
    qtbot.waitUntil(lambda: live.output.visible and done(widget)(), timeout=60_000)


def test_data_edited_while_live_is_off_is_normalised_again(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    """The shared read is forgotten on every data event, not only while a live view listens: data
    edited with live off kept the old normalisation when live came back (the second review)."""
    viewer = make_napari_viewer()
    widget = live_xz_view(qtbot, viewer, cremi64.astype(np.float32))
    layer = viewer.layers["cremi"]
    before = widget.live_view._norm.high
    widget.live_check.value = False
    layer.data *= 10
    layer.data = layer.data
    widget.live_check.value = True
    qtbot.waitUntil(done(widget), timeout=60_000)
    assert widget.live_view._norm.high > 5 * before


def test_a_live_layer_the_user_hid_stays_hidden_and_new_data_hides_the_map_too(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    """Hiding the live layer (to compare with the input under it) lasted until the next slider
    step; new data hid the old live image but not the old data's confidence map (the second review)."""
    viewer = make_napari_viewer()
    widget = live_xz_view(qtbot, viewer, cremi64)
    widget.confidence_check.value = True
    live = widget.live_view
    qtbot.waitUntil(lambda: live.confidence_output is not None, timeout=60_000)
    live.output.visible = False
    viewer.dims.set_point(1, 4 * 30)
    qtbot.waitUntil(done(widget, 2), timeout=60_000)
    assert not live.output.visible
    live.output.visible = True
    viewer.layers["cremi"].data = (255 - cremi64).astype(np.uint8)
    assert not live.output.visible and not live.confidence_output.visible
    viewer.layers["cremi"].visible = False  # the input's visibility, followed, does not show the old image
    viewer.layers["cremi"].visible = True
    assert not live.output.visible
    qtbot.waitUntil(lambda: live.output.visible and live.confidence_output.visible, timeout=60_000)
