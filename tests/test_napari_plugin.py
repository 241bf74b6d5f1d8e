"""The plugin in the real napari viewer (Xvfb): widget, live view, layer command, bad layers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_niiv.data.degrade import pool_axis
from napari_niiv.errors import NiivInputError
from tests.conftest import read_noting

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.slow  # a napari viewer each

ALPHA = 4.0
PLUGIN = "napari-niiv"


@pytest.fixture(scope="module")
def anisotropic(medulla) -> np.ndarray:
    """Real FIB-SEM pooled by 4 along z: (16, 64, 64) uint8."""
    return pool_axis(medulla.astype(np.float32), ALPHA, 0).round().astype(np.uint8)


@pytest.fixture
def viewer_with_volume(make_napari_viewer, anisotropic):
    viewer = make_napari_viewer()
    layer = viewer.add_image(anisotropic, name="em", scale=(ALPHA * 10, 10, 10), translate=(5, -30, 100))
    return viewer, layer


def open_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "niiv isotropic view")
    return widget


def wait_live(qtbot, widget, timeout=60_000):
    """Until the live view has shown niiv for the current view."""
    qtbot.waitUntil(lambda: widget.live_view is not None and not widget.live_view.busy, timeout=timeout)
    qtbot.wait(50)  # the last queued result signal
    qtbot.waitUntil(lambda: widget.live_view.timings and "niiv" in widget.live_view.timings[-1], timeout=timeout)


def visible_box(viewer, axis_pair):
    cam = viewer.scene.camera
    size = viewer.canvas.viewbox_size(viewer.layers)
    return [(c - s / 2 / cam.zoom, c + s / 2 / cam.zoom) for c, s in zip(cam.center[-2:], size, strict=True)]


def check_output(viewer, layer, out, displayed, spacing):
    """The live layer covers the visible part of the volume at ``spacing`` world units per pixel."""
    box = visible_box(viewer, displayed)
    for axis, (lo, hi) in zip(displayed, box, strict=True):
        edge = layer.translate[axis] - 0.5 * layer.scale[axis]
        end = edge + layer.data.shape[axis] * layer.scale[axis]
        first = out.translate[axis]
        last = first + (out.data.shape[axis] - 1) * out.scale[axis]
        assert out.scale[axis] == pytest.approx(spacing)
        assert max(lo, edge) - spacing <= first <= max(lo, edge) + spacing
        assert min(hi, end) - spacing <= last <= min(hi, end) + spacing


def test_widget_opens_from_the_manifest_and_reads_alpha(make_napari_viewer, anisotropic):
    from napari_niiv._napari.widget import NiivWidget

    viewer = make_napari_viewer()
    viewer.add_image(anisotropic, name="em", scale=(50, 5, 5))
    widget = open_widget(viewer)
    assert isinstance(widget, NiivWidget)
    assert widget.volume_choice.value.name == "em" and widget.alpha_spin.value == 10.0
    assert "niiv-v2-fibsem-a8" in widget.weights_choice.choices and widget.device_choice.value == "auto"


def test_live_view_follows_pan_zoom_and_slices(qtbot, viewer_with_volume):
    viewer, layer = viewer_with_volume
    viewer.dims.order = (1, 0, 2)  # an xz view: z rows, x columns; y sliced
    viewer.dims.set_point(1, -30 + 10 * 20)  # y plane 20
    viewer.reset_view()
    widget = open_widget(viewer)
    widget.live_check.value = True
    wait_live(qtbot, widget)
    out = widget.live_view.output
    assert out is not None and out in viewer.layers and out.data.shape[1] == 1
    zoom = viewer.scene.camera.zoom
    check_output(viewer, layer, out, (0, 2), max(1 / zoom, 10.0))
    assert out.translate[1] == pytest.approx(-30 + 10 * 20)  # the plane the input shows

    # niiv, not the interpolated preview: equal to the core's decoding of this slice
    grid = widget.live_view._grid
    niiv = widget.live_view._renderer.render(grid)
    np.testing.assert_allclose(out.data, widget.live_view._norm.invert(niiv, np.float32), atol=1e-3)

    # zoom in and pan: a finer, smaller region; the slice's latents are reused (decoder only)
    misses = widget.live_view._renderer.cache.misses
    viewer.scene.camera.zoom = zoom * 6
    viewer.scene.camera.center = (0, 5 + 200, 100 + 150)
    wait_live(qtbot, widget)
    check_output(viewer, layer, out, (0, 2), max(1 / (zoom * 6), 10.0))
    assert widget.live_view._renderer.cache.misses == misses

    # scroll to another y plane: the layer moves; at the same zoom its scale is not set again
    # (napari recomputes the viewer's dims on each scale event)
    scaled: list = []
    out.events.scale.connect(scaled.append)
    viewer.dims.set_point(1, -30 + 10 * 41)
    wait_live(qtbot, widget)
    assert out.translate[1] == pytest.approx(-30 + 10 * 41)
    assert scaled == []

    # grid mode (input and niiv side by side): each viewbox shows less, and the view follows
    viewer.scene.camera.zoom = zoom
    wait_live(qtbot, widget)
    columns = out.data.shape[2]
    viewer.canvas.grid.enabled = True
    wait_live(qtbot, widget)
    assert viewer.canvas.viewbox_size(viewer.layers)[1] < viewer.canvas.size[1]
    check_output(viewer, layer, out, (0, 2), max(1 / zoom, 10.0))
    assert out.data.shape[2] < columns
    viewer.canvas.grid.enabled = False

    # an xy view between acquired slices: z is sampled where the slider is, not at a plane
    viewer.dims.order = (0, 1, 2)
    viewer.reset_view()
    z = 5 + ALPHA * 10 * 6.5  # halfway between acquired planes 6 and 7
    viewer.dims.set_point(0, z)
    wait_live(qtbot, widget)
    assert widget.live_view._grid.kind == "xy"
    assert out.translate[0] == pytest.approx(viewer.dims.point[0])
    widget.live_check.value = False
    assert widget.live_view is None


def test_live_preview_arrives_before_niiv(qtbot, viewer_with_volume):
    viewer, _ = viewer_with_volume
    viewer.dims.order = (1, 0, 2)
    viewer.reset_view()
    widget = open_widget(viewer)
    widget.orientation_choice.value = "both"  # slower: the preview clearly comes first
    widget.live_check.value = True
    wait_live(qtbot, widget)
    t = widget.live_view.timings[-1]
    assert 0 < t["preview"] < t["niiv"]


def find_action(menu, text):
    for action in menu.actions():
        if action.text().replace("&", "").startswith(text):
            return action
        if action.menu() is not None:
            found = find_action(action.menu(), text)
            if found is not None:
                return found
    return None


def wait_tiles(qtbot, iso, timeout=60_000):
    lazy = iso.data[0].volume
    qtbot.waitUntil(lambda: lazy.pending == 0 and len(lazy._tiles) > 0, timeout=timeout)
    return lazy


def test_layers_menu_command_adds_a_lazy_isotropic_layer(qtbot, viewer_with_volume, tmp_path):
    viewer, layer = viewer_with_volume
    viewer.layers.selection.active = layer
    action = find_action(viewer.window._qt_window.menuBar(), "Reconstruct isotropic")
    assert action is not None, "Layers > Transform > niiv > Reconstruct isotropic is missing"
    action.trigger()  # prepared on a thread, inserted when ready
    qtbot.waitUntil(lambda: viewer.layers[-1].name == "em isotropic (niiv)", timeout=60_000)
    iso = viewer.layers[-1]
    assert iso.multiscale
    assert viewer.layers.selection.active is layer  # the input stays selected
    assert iso.data[0].shape == (64, 64, 64)
    assert iso.scale[0] == pytest.approx(10) and iso.contrast_limits == layer.contrast_limits

    # the isotropic layer covers exactly the input's world extent (voxel edges, not centres)
    def edges(lay):
        half = 0.5 * np.asarray(lay.scale)
        return lay.extent.world + np.stack([-half, half])

    np.testing.assert_allclose(edges(iso), edges(layer), atol=1e-6)
    lazy = wait_tiles(qtbot, iso)
    # the cached tile the viewer shows is niiv, equal to the core's block reconstruction
    key = next(k for k in lazy._tiles if k[0] == 0)
    index = lazy._tile_index(key)
    from napari_niiv.inference.reconstructor import NormalisedView

    expect = lazy.rec.block(NormalisedView(layer.data, lazy.norm), lazy.shapes[0], index)
    # The menu command runs at the default precision: in bf16 the views' and the blocks' encoder
    # batches round differently, so they agree to the engine's bf16 accuracy (5e-3 of the
    # normalised range, tests/test_engine.py); in fp32 to float rounding. (test_live checks the
    # lazy tiles equal the core's decoding in fp32.)
    tol = 1e-3 if lazy.rec.engine.dtype is None else 5e-3 * (lazy.norm.high - lazy.norm.low)
    np.testing.assert_allclose(lazy._tiles[key], lazy.norm.invert(expect, np.float32), atol=tol)
    # saving through the writer runs the whole reconstruction into an OME-Zarr at the right place
    out = tmp_path / "iso.ome.zarr"
    viewer.layers.selection = {iso}
    iso.contrast_limits = (20.0, 180.0)  # the user's window is what the store keeps
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    saved = viewer.open(str(out), plugin=PLUGIN)[0]
    np.testing.assert_allclose(saved.contrast_limits, (20.0, 180.0))
    np.testing.assert_allclose(saved.scale, iso.scale)
    np.testing.assert_allclose(saved.translate, iso.translate, atol=1e-6)
    everything = (slice(0, 64),) * 3
    whole = lazy.rec.block(NormalisedView(layer.data, lazy.norm), lazy.shapes[0], everything)
    np.testing.assert_allclose(np.asarray(saved.data), lazy.norm.invert(whole, np.uint8), atol=1)
    viewer.layers.remove(iso)
    assert lazy._worker.stopped  # removing the layer closed it


def test_a_whole_volume_layer_of_a_large_lazy_input_reads_its_stand_ins_off_naparis_thread(
    qtbot, make_napari_viewer, anisotropic, monkeypatch
):
    """Over the in-memory size the input stays lazy (a large store): napari's slicing reads none
    of it (the plane is empty at first), and the layer is redrawn with the interpolated stand-ins as
    they are read on their own thread, while no niiv tile is made."""
    import threading

    import dask

    from napari_niiv._napari import layer_view
    from napari_niiv._napari.commands import add_isotropic_layer

    monkeypatch.setattr(layer_view, "IN_MEMORY_BYTES", 0)
    data, readers = read_noting(anisotropic, (2, 16, 16))
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, name="em", scale=(ALPHA * 10, 10, 10))
    iso = add_isotropic_layer(viewer, layer, weights="niiv-fast")
    lazy = iso.data[0].volume
    assert not isinstance(lazy.source, np.ndarray)
    gate, started = threading.Event(), threading.Event()
    lazy._worker.submit(lambda cancelled: started.set() or gate.wait(60))  # no niiv tiles meanwhile
    try:
        assert started.wait(30)
        lazy._previews.clear()
        made = set(lazy._tiles)  # the first view's, made before the worker was held
        layer.visible = False  # napari reads the input layer's own plane on its thread
        readers.clear()
        with dask.config.set(scheduler="synchronous"):  # chunks are read on the thread that asks
            viewer.dims.set_current_step(0, 300)  # a plane not shown before
            assert np.isnan(np.asarray(iso._slice.image.raw)).all() and "MainThread" not in readers
            qtbot.waitUntil(lambda: np.isfinite(np.asarray(iso._slice.image.raw)).all(), timeout=30_000)
        assert readers and "MainThread" not in readers
        assert set(lazy._tiles) == made
    finally:
        gate.set()


def test_layer_right_click_menu_has_the_command(qtbot, viewer_with_volume):
    from napari._app_model.constants import MenuId
    from napari._app_model.context import get_context
    from napari._qt._qapp_model import build_qmodel_menu

    from napari_niiv._napari.context_menu import CONTEXT_TITLE

    viewer, layer = viewer_with_volume
    open_widget(viewer)  # loading the plugin (widget, reader, sample or command) adds the entry
    viewer.layers.selection.active = layer
    menu = build_qmodel_menu(MenuId.LAYERLIST_CONTEXT)
    menu.update_from_context(get_context(viewer.layers))
    action = find_action(menu, CONTEXT_TITLE)
    assert action is not None and action.isEnabled()
    action.trigger()  # prepared on a thread, inserted when ready
    qtbot.waitUntil(lambda: viewer.layers[-1].name == "em isotropic (niiv)", timeout=60_000)
    wait_tiles(qtbot, viewer.layers[-1])
    # not offered for a 2D layer
    viewer.layers.selection.active = viewer.add_image(np.zeros((32, 32)), name="flat")
    menu.update_from_context(get_context(viewer.layers))
    assert not find_action(menu, CONTEXT_TITLE).isVisible()


def test_bad_layers_get_a_clear_message(qtbot, make_napari_viewer, monkeypatch):
    from napari_niiv._napari.commands import add_isotropic_layer
    from napari_niiv._napari.layer_view import check_layer

    viewer = make_napari_viewer()
    cases = {
        "2D": viewer.add_image(np.zeros((32, 32)), name="flat"),
        "RGB": viewer.add_image(np.zeros((4, 32, 32, 3), np.uint8), name="colour", rgb=True),
        "Labels layer": viewer.add_labels(np.zeros((8, 32, 32), int), name="seg"),
        "4D": viewer.add_image(np.zeros((2, 8, 32, 32)), name="movie"),
    }
    for expected, layer in cases.items():
        with pytest.raises(NiivInputError, match=expected):
            check_layer(layer)
    iso_scale = viewer.add_image(np.zeros((8, 32, 32), np.uint8), name="no voxel size")
    # napari's Layers > Transform menu has no scale to set: the message points at what can set it
    with pytest.raises(NiivInputError, match="anisotropy is unknown: pick the volume in the niiv widget"):
        add_isotropic_layer(viewer, iso_scale)
    # the menu command reports instead of raising: napari's notification, recorded as it is shown
    # (connecting to the worker after the command returned raced its thread: Python 3.12 errored first)
    from napari_niiv._napari import commands

    said = []
    shown = commands.show_error
    monkeypatch.setattr(commands, "show_error", lambda message: (said.append(message), shown(message)))
    commands.reconstruct_isotropic(cases["2D"], viewer)
    qtbot.waitUntil(lambda: bool(said), timeout=30_000)
    assert "2D" in str(said[0]) and viewer.layers[-1].name == "no voxel size"


def test_closing_the_viewer_during_live_reconstruction(qtbot, make_napari_viewer, anisotropic):
    viewer = make_napari_viewer()
    viewer.add_image(anisotropic, name="em", scale=(40, 10, 10))
    viewer.dims.order = (1, 0, 2)
    widget = open_widget(viewer)
    widget.orientation_choice.value = "both"
    widget.live_check.value = True
    qtbot.waitUntil(lambda: widget.live_view is not None and widget.live_view._worker.busy, timeout=10_000)
    worker = widget.live_view._worker
    viewer.close()
    qtbot.waitUntil(lambda: worker.stopped, timeout=10_000)


def test_new_niiv_layers_leave_the_selection_as_it_was_without_selection_events(make_napari_viewer):
    """insert_layer puts the selection back inside an event blocker: the layer list, the layer
    controls and the dock never see the new layer selected (no controls rebuilt twice)."""
    from napari.utils._proxies import PublicOnlyProxy

    from napari_niiv._napari.layer_view import insert_layer

    viewer = make_napari_viewer()
    a, b = viewer.add_image(np.zeros((4, 8, 8)), name="a"), viewer.add_image(np.zeros((4, 8, 8)), name="b")
    seen: list[str] = []
    viewer.layers.selection.events.connect(lambda event: seen.append(event.type))
    for selected in ({a}, {a, b}, set()):
        viewer.layers.selection = selected
        seen.clear()
        new = napari.layers.Image(np.ones((4, 8, 8)), name=f"new {len(viewer.layers)}")
        insert_layer(PublicOnlyProxy(viewer), 1, new)  # as a plugin's widget gets the viewer
        assert viewer.layers[1] is new and set(viewer.layers.selection) == selected and not seen
        assert viewer.layers.selection.active is (a if selected == {a} else None)


def test_a_whole_volume_layer_of_a_small_lazy_input_reads_it_once_into_memory(anisotropic) -> None:
    """Its tiles' interpolated stand-ins are read on napari's thread: through a chunked store's
    dask array each slider step took 0.4-1.7 s (found by the lazy-layer audit). The normalisation
    is still fitted on the layer's own data, as a save of it is."""
    import dask.array as da
    from napari.layers import Image

    from napari_niiv._napari.commands import prepare_isotropic_layer
    from napari_niiv._napari.layer_view import SharedRead
    from napari_niiv.data import fit_normalisation

    data = da.from_array(anisotropic, chunks=(2, 16, 16))
    layer = Image(data, scale=(40, 10, 10), name="em")
    prepared = prepare_isotropic_layer(layer, weights="niiv-fast")
    try:
        assert isinstance(prepared.lazy.source, np.ndarray)
        np.testing.assert_array_equal(prepared.lazy.source, anisotropic)
        assert prepared.lazy.norm == fit_normalisation(data)
        # the layer's live view reads nothing again: one copy in memory for both
        assert SharedRead.of(layer).cached(data)[0] is prepared.lazy.source
    finally:
        prepared.lazy.close()
