"""Audit 11 (dock-watch): the dock and its live view when the user changes the input layer while
niiv runs, in the real napari viewer under Xvfb. A layer made one niiv cannot take (rotated,
sheared, an affine, mixed units, a flip) is said in check_layer's words, its live layers go and the
view comes back once the layer is fixed; a change of units moves the live layer to the new unit;
the slider's step is taken in the layer's unit; the dock follows the layer's units and affine, and
says why it offers no layer."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.slow  # a napari viewer each

from tests.conftest import TINY, open_dock, random_model  # noqa: E402


def live_layers(viewer) -> list:
    return [la for la in viewer.layers if "niiv_live_of" in la.metadata or "niiv_confidence_of" in la.metadata]


def showing(widget):
    live = widget.live_view
    return lambda: live is not None and widget.status_label.value.startswith("showing user/tiny") and not live.busy


def live_dock(qtbot, viewer, widget, confidence: bool = False):
    widget.weights_choice.value = "user/tiny"
    widget.fast_check.value = False
    widget.confidence_check.value = confidence
    widget.live_check.value = True
    qtbot.waitUntil(showing(widget), timeout=60_000)
    if confidence:
        qtbot.waitUntil(lambda: widget.live_view.confidence_output is not None, timeout=60_000)


SKEW = np.array([[1, 0, 0, 0], [0, 0.9, 0.1, 0], [0, -0.1, 0.9, 0], [0, 0, 0, 1.0]])
# (change, undo, check_layer's words)
BREAKS = {
    "rotate": ({"rotate": 30}, {"rotate": 0}, "is rotated or sheared"),
    "shear": ({"shear": (0.2, 0, 0)}, {"shear": (0, 0, 0)}, "is rotated or sheared"),
    "affine": ({"affine": SKEW}, {"affine": None}, "is rotated or sheared"),
    "mixed units": ({"units": ("um", "nm", "nm")}, {"units": "nm"}, "different units on z, y, x"),
    "flip": ({"scale": (-40, 4, 4)}, {"scale": (40, 4, 4)}, "(a flip)"),
}


def set_all(layer, values: dict) -> None:
    for name, value in values.items():
        setattr(layer, name, value)


@pytest.mark.parametrize("case", list(BREAKS))
def test_a_layer_made_one_niiv_cannot_take_while_live_says_why_and_live_comes_back(
    case, qtbot, make_napari_viewer, crop, tiny_user_weights
):
    """It said 'live view: nothing visible' (at the next camera event, or never for a shear or
    units), left the live layers on the old grid over the changed layer, and stayed off after the
    layer was fixed."""
    change, undo, words = BREAKS[case]
    viewer = make_napari_viewer()
    layer = viewer.add_image(crop, name="em", scale=(40, 4, 4), units="nm")
    widget = open_dock(viewer)
    with qtbot.capture_exceptions() as exceptions:
        live_dock(qtbot, viewer, widget, confidence=True)
        set_all(layer, change)
        qtbot.waitUntil(lambda: words in widget.status_label.value, timeout=10_000)
        viewer.scene.camera.zoom *= 1.2  # camera and dims events while the layer is refused
        viewer.dims.set_point(0, 200)
        qtbot.wait(300)
        assert words in widget.status_label.value
        assert "nothing visible" not in widget.status_label.value
        qtbot.waitUntil(lambda: live_layers(viewer) == [], timeout=5_000)
        assert list(viewer.layers) == [layer]
        set_all(layer, undo)
        qtbot.waitUntil(showing(widget), timeout=60_000)
        assert widget.live_check.value
        qtbot.waitUntil(lambda: widget.live_view.output in viewer.layers, timeout=5_000)
        widget.live_check.value = False
    assert not exceptions, exceptions


def test_the_live_view_alone_pauses_in_check_layers_words_and_goes_on(qtbot, make_napari_viewer, crop):
    """The live view without the dock (as the tests and the benchmark use it): a rotation set while
    it runs is said as check_layer says it, its layer goes, and it shows the view again once the
    rotation is reset; no camera or dims event raises meanwhile."""
    from napari_niiv._napari.live_view import LiveView
    from napari_niiv.inference.settings import InferenceSettings

    viewer = make_napari_viewer()
    layer = viewer.add_image(crop, name="em", scale=(40, 4, 4))
    news: list[str] = []
    settings = InferenceSettings(alpha=10.0, precision="fp32", device="cpu")
    live = LiveView(viewer, layer, random_model(TINY, seed=1), settings, on_status=news.append)
    # (the worker may be done while its last image is still on its way to the GUI thread)
    shown = lambda: bool(news) and news[-1].startswith("showing niiv") and not live.busy  # noqa: E731
    try:
        with qtbot.capture_exceptions() as exceptions:
            qtbot.waitUntil(shown, timeout=60_000)
            layer.rotate = 30
            qtbot.waitUntil(lambda: any("is rotated or sheared" in n for n in news), timeout=5_000)
            viewer.scene.camera.zoom *= 1.5
            viewer.dims.set_point(0, 120)
            qtbot.wait(300)
            assert "is rotated or sheared" in news[-1] and "layer.rotate = 0" in news[-1], news[-3:]
            assert not any("nothing visible" in n for n in news)
            qtbot.waitUntil(lambda: list(viewer.layers) == [layer], timeout=5_000)
            assert live.output is None
            layer.rotate = 0
            qtbot.waitUntil(shown, timeout=60_000)
            assert live.output in viewer.layers
        assert not exceptions, exceptions
    finally:
        live.close()


def test_a_change_of_units_while_live_puts_the_live_layer_in_the_new_unit(
    qtbot, make_napari_viewer, crop, tiny_user_weights
):
    """nm -> um while live: the live layer stayed in nm on the old grid (scale 4 nm beside an input of
    4 um voxels): napari drew it a thousand times too small."""
    viewer = make_napari_viewer()
    layer = viewer.add_image(crop, name="em", scale=(40, 4, 4), units="nm")
    widget = open_dock(viewer)
    with qtbot.capture_exceptions() as exceptions:
        live_dock(qtbot, viewer, widget, confidence=True)
        assert [str(u) for u in widget.live_view.output.units] == ["nanometer"] * 3
        layer.units = "um"
        qtbot.waitUntil(showing(widget), timeout=60_000)
        live = widget.live_view
        outs = lambda: (live.output, live.confidence_output)  # noqa: E731
        in_um = lambda: all(o is not None and [str(u) for u in o.units] == ["micrometer"] * 3 for o in outs())  # noqa: E731
        qtbot.waitUntil(in_um, timeout=60_000)  # (the map comes after the image)
        qtbot.waitUntil(lambda: not live.busy, timeout=60_000)
        for out in outs():
            # where napari draws it: on the input's voxels (the output's pixel edge on the input's)
            assert out.data_to_world((0, -0.5, -0.5))[1:] == pytest.approx(layer.data_to_world((0, -0.5, -0.5))[1:])
        widget.live_check.value = False
    assert not exceptions, exceptions


def test_the_slider_step_is_taken_in_the_layers_unit(qtbot, make_napari_viewer, crop, tiny_user_weights):
    """A layer in micrometres beside one in nanometres (napari's sliders move in nm): one slider step
    along y was taken as 1000 input pixels, so the live view prefetched no neighbouring plane."""
    viewer = make_napari_viewer()
    viewer.add_image(crop, name="nm", scale=(40, 4, 4), units="nm", translate=(0, 0, 400))
    layer = viewer.add_image(crop, name="um", scale=(0.04, 0.004, 0.004), units="um")
    viewer.dims.order = (1, 0, 2)  # an xz view: y is the slider, and its neighbours are prefetched
    viewer.dims.set_point(1, 4 * 21)
    viewer.reset_view()
    widget = open_dock(viewer)
    widget.volume_choice.value = layer
    live_dock(qtbot, viewer, widget)
    live = widget.live_view
    assert live._slider_step(1) == pytest.approx(1.0)  # the slider steps 4 nm: one voxel of 0.004 um
    qtbot.waitUntil(lambda: "prefetched" in live.timings[-1], timeout=60_000)
    assert live.timings[-1]["prefetched"] > 0
    widget.live_check.value = False


def test_the_dock_follows_the_layers_units_and_affine(qtbot, make_napari_viewer, crop):
    """The dock watched the scale only: a layer set to micrometres kept the electron-microscopy
    weights and note of its nanometres, and an affine that halves the xy voxels kept alpha 10."""
    viewer = make_napari_viewer()
    layer = viewer.add_image(crop, name="em", scale=(40, 4, 4), units="nm")
    widget = open_dock(viewer)
    assert widget.weights_choice.value == "niiv-em" and widget.alpha_spin.value == 10
    layer.units = "um"
    assert widget.weights_choice.value == "niiv-lm"
    assert "light microscopy" in widget.weights_note.value
    layer.affine = np.diag([1.0, 0.5, 0.5, 1.0])
    assert widget.alpha_spin.value == 20
    layer.rotate = 30
    assert "is rotated or sheared" in widget.status_label.value
    layer.rotate = 0
    assert "rotated" not in widget.status_label.value


def test_a_dock_that_can_offer_no_layer_says_why_of_each(qtbot, make_napari_viewer, crop):
    """A 2D image, an RGB image and labels open: the volume list was empty and the dock said nothing."""
    viewer = make_napari_viewer()
    viewer.add_image(crop[0], name="flat")
    viewer.add_image(np.stack([crop] * 3, axis=-1), name="rgb", rgb=True)
    viewer.add_labels((crop > 128).astype(np.uint8), name="labels")
    widget = open_dock(viewer)
    assert widget.volume_choice.value is None
    status = widget.status_label.value
    for words in ("'flat' is 2D; niiv needs a 3D (z, y, x) volume", "'rgb' is RGB", "'labels' is a Labels layer"):
        assert words in status, status
    viewer.add_image(crop[1], name="flat 2")
    assert "'flat 2' is 2D" in widget.status_label.value
    layer = viewer.add_image(crop, name="em", scale=(40, 4, 4))
    assert widget.volume_choice.value is layer
    assert "is 2D" not in widget.status_label.value
    viewer.layers.remove(layer)
    assert "'flat' is 2D" in widget.status_label.value


def test_a_fixed_layer_is_said_to_be_fine_again_and_both_pauses_speak_alike(
    qtbot, make_napari_viewer, crop, tiny_user_weights
):
    """Review 11: the dock and the live view said a pause in two wordings; and once the layer was
    fixed after the user had ticked live meanwhile (which cancels the resume), the whole status was
    cleared: live off and not a word."""
    from napari_niiv._napari.live_view import paused_status

    viewer = make_napari_viewer()
    layer = viewer.add_image(crop, name="em", scale=(40, 4, 4), units="nm")
    widget = open_dock(viewer)
    live_dock(qtbot, viewer, widget)
    layer.rotate = 30
    qtbot.waitUntil(lambda: "is rotated or sheared" in widget.status_label.value, timeout=10_000)
    why = widget._refusal
    assert widget.status_label.value == paused_status(why, "em")
    widget.live_check.value = True  # the user's tick while still rotated: refused, and no resume
    assert not widget.live_check.value
    layer.rotate = 0
    qtbot.waitUntil(lambda: "is rotated" not in widget.status_label.value, timeout=10_000)
    assert widget.status_label.value == "'em' is a volume niiv can take again"
