"""The viewer journey audit (round 9): a microscopist's session in the real napari viewer under
Xvfb, checking that what niiv shows and writes lands where the input is and says what it is."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.slow  # a napari viewer each

from tests.conftest import open_dock  # noqa: E402


def live_layer(viewer, name):
    return next((layer for layer in viewer.layers if layer.name == f"{name} niiv live"), None)


def test_live_view_of_a_volume_without_voxel_sizes_samples_z_at_the_typed_alpha(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    """cremi_a.tif opened as a file has no voxel sizes (scale 1, 1, 1): the user types alpha 10.
    Zoomed in on an xz view, niiv must fill in between the 32 planes (rows a tenth of a plane apart,
    screen allowing), not sample once per plane, which showed the input again; in an xy view the
    live layer's z step is the output voxel, so napari's slider stops between the planes."""
    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(cremi64, name="cremi")  # no scale: anisotropy unknown
    widget = open_dock(viewer)
    widget.weights_choice.value = "user/tiny"
    widget.alpha_spin.value = 10.0  # typed: confirms it for this layer
    widget.fast_check.value = False
    viewer.dims.order = (1, 0, 2)  # xz
    viewer.scene.camera.center = (0.0, 15.5, 31.5)
    viewer.scene.camera.zoom = 8.0  # 8 screen pixels per plane: room for 8 rows of niiv between planes
    widget.live_check.value = True
    qtbot.waitUntil(lambda: live_layer(viewer, "cremi") is not None, timeout=60_000)
    out = live_layer(viewer, "cremi")
    qtbot.waitUntil(lambda: not widget.live_view.busy, timeout=60_000)
    rows = out.data.shape[0]
    assert rows >= 4 * layer.data.shape[0], f"{rows} z rows for {layer.data.shape[0]} planes: no niiv between planes"
    assert out.scale[0] == pytest.approx(1 / 8) and out.scale[2] == pytest.approx(1.0)  # screen-limited in z only
    # exactly over the input: the first and last rows' edges are the volume's z edges when all of z is shown
    lo = out.translate[0] - out.scale[0] / 2
    hi = out.translate[0] + (rows - 0.5) * out.scale[0]
    assert lo == pytest.approx(-0.5) and hi == pytest.approx(31.5)

    viewer.dims.order = (0, 1, 2)  # xy: the live layer's z step is the output's z voxel
    qtbot.waitUntil(lambda: out.ndim == 3 and out.data.shape[0] == 1 and not widget.live_view.busy, timeout=60_000)
    assert out.scale[0] == pytest.approx(0.1)
    assert viewer.dims.range[0].step == pytest.approx(0.1)  # the slider stops between acquired planes
    widget.live_check.value = False


def test_saves_of_a_volume_without_voxel_sizes_have_isotropic_voxels_as_niiv_reconstruct_writes(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    """A TIFF without voxel sizes at a typed alpha 10: the whole-volume layer overlays the input as
    napari shows it (z scale 1/10), but the stores that Save isotropic volume... and File > Save of
    that layer write must say what `niiv reconstruct --alpha 10` says of the same file: isotropic
    voxels (1, 1, 1), the first plane's centre 4.5 voxels before the first section's; they wrote
    voxels (0.1, 1, 1), an isotropic volume labelled ten times thinner in z than wide."""
    from napari_niiv.inference.geometry import output_geometry

    viewer = make_napari_viewer()
    layer = viewer.add_image(cremi64, name="cremi")  # no scale, no unit: a file without voxel sizes
    widget = open_dock(viewer)
    widget.weights_choice.value = "user/tiny"
    widget.alpha_spin.value = 10.0
    cli = output_geometry(cremi64.shape, 10.0, 1.0, None)  # what the CLI writes for the file
    assert cli.voxel_size == (1.0, 1.0, 1.0) and cli.translation[0] == pytest.approx(-4.5)

    saver = widget.save_to(tiny_user_weights.parent / "dock.ome.zarr")
    assert saver is not None, widget.status_label.value
    qtbot.waitUntil(lambda: widget.saver is None, timeout=120_000)
    widget.reconstruct_button.native.click()
    qtbot.waitUntil(lambda: widget.preparing == 0, timeout=60_000)
    lazy = viewer.layers["cremi isotropic (niiv)"]
    assert tuple(lazy.scale) == pytest.approx((0.1, 1, 1)) and lazy.translate[0] == pytest.approx(-0.45)
    viewer.layers.selection = {lazy}
    viewer.layers.save(str(tiny_user_weights.parent / "file.ome.zarr"), selected=True, plugin="napari-niiv")
    viewer.layers.selection = {layer}
    for name in ("dock", "file"):
        (saved,) = viewer.open(str(tiny_user_weights.parent / f"{name}.ome.zarr"), plugin="napari-niiv")
        assert tuple(saved.scale) == pytest.approx(cli.voxel_size), name
        assert tuple(saved.translate) == pytest.approx(cli.translation), name
        assert saved.data.shape == cli.shape


def test_saves_of_a_calibrated_volume_keep_its_placement(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    """The same saves of a layer with voxel sizes, a translation and nm units stay where napari
    shows the layer: the input's world extent, to the nanometre (scale 40, 4, 4, translate 120, 8, -12)."""
    viewer = make_napari_viewer()
    layer = viewer.add_image(cremi64, name="em", scale=(40, 4, 4), translate=(120, 8, -12), units="nm")
    widget = open_dock(viewer)
    widget.weights_choice.value = "user/tiny"
    saver = widget.save_to(tiny_user_weights.parent / "dock.ome.zarr")
    assert saver is not None, widget.status_label.value
    qtbot.waitUntil(lambda: widget.saver is None, timeout=120_000)
    (saved,) = viewer.open(str(tiny_user_weights.parent / "dock.ome.zarr"), plugin="napari-niiv")
    assert tuple(saved.scale) == pytest.approx((4, 4, 4)) and tuple(saved.translate) == pytest.approx((102, 8, -12))
    assert str(saved.units[0]) == "nanometer"
    lo_in = layer.data_to_world((-0.5, -0.5, -0.5))
    hi_in = layer.data_to_world(tuple(n - 0.5 for n in cremi64.shape))
    assert saved.data_to_world((-0.5, -0.5, -0.5)) == pytest.approx(lo_in)
    assert saved.data_to_world(tuple(n - 0.5 for n in saved.data.shape)) == pytest.approx(hi_in)
