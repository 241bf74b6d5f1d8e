"""Every isotropic output lands on the same world positions: the CLI's OME-Zarr (read back by the
plugin's reader, napari-ome-zarr and ome-zarr-py), the lazy layer, its saved copy and the live layer,
for an ImageJ TIFF with spacing and units and an OME-Zarr with a translation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_niiv.cli import main
from napari_niiv.data.degrade import pool_axis
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.inference.weights import save_weights
from tests.conftest import random_model, write_tif

pytest.importorskip("napari")
pytestmark = pytest.mark.slow  # a napari viewer each

ALPHA = 4.0
VOXEL = (16.0, 4.0, 4.0)  # nm
TRANSLATION = (100.0, -20.0, 8.0)  # nm, world position of input voxel 0's centre
PLUGIN = "napari-niiv"
SETTINGS = InferenceSettings(alpha=ALPHA, orientation="xz", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def volume(medulla) -> np.ndarray:
    """Real FIB-SEM pooled by 4 along z: (12, 40, 48) uint8."""
    return pool_axis(medulla[:48, :40, :48].astype(np.float32), ALPHA, 0).round().astype(np.uint8)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(path, random_model(), ALPHA, None)
    return path


def _imagej_tif(folder, volume):
    path = folder / "aniso.tif"
    meta = {"spacing": VOXEL[0], "unit": "nm", "axes": "ZYX"}
    write_tif(path, volume, imagej=True, resolution=(1 / VOXEL[2], 1 / VOXEL[1]), metadata=meta)
    return path, (0.0, 0.0, 0.0)


def _ome_zarr(folder, volume):
    from napari_niiv.inference.store import ArrayBlocks, Layout, write_ome_zarr

    path = folder / "aniso.ome.zarr"
    layout = Layout(volume.shape, volume.dtype.str, (12, 40, 48), VOXEL, "nanometer", TRANSLATION, levels=1)
    write_ome_zarr(path, layout, ArrayBlocks(volume))
    return path, TRANSLATION


def _expected(shape, translation):
    """The convention, written out: output voxels tile the input's extent from its low edge."""
    n_out = (shape[0] * ALPHA, shape[1], shape[2])
    voxel = tuple(s * n / m for s, n, m in zip(VOXEL, shape, n_out, strict=True))
    first = tuple(t - s / 2 + v / 2 for t, s, v in zip(translation, VOXEL, voxel, strict=True))
    return voxel, first


def _same_place(scale, translate, voxel, first, what):
    np.testing.assert_allclose(np.asarray(scale)[-3:], voxel, rtol=1e-9, err_msg=what)
    # to 1e-6 of a voxel
    np.testing.assert_allclose(np.asarray(translate)[-3:], first, rtol=0, atol=1e-6 * min(voxel), err_msg=what)


def _ome_zarr_py(path):
    """Scale, translation and units of level 0 as ome-zarr-py reads them."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(path)))()))
    transforms = node.metadata["coordinateTransformations"][0]
    kinds = {t["type"]: t[t["type"]] for t in transforms}
    units = [a.get("unit") for a in node.metadata["axes"]]
    return kinds["scale"], kinds.get("translation", [0.0, 0.0, 0.0]), units


@pytest.mark.parametrize("make_input", [_imagej_tif, _ome_zarr], ids=["imagej-tiff", "ome-zarr"])
def test_every_output_lands_on_the_same_world_positions(
    make_napari_viewer, qtbot, tmp_path, volume, weights, make_input
) -> None:
    from napari_niiv._napari.commands import add_isotropic_layer
    from napari_niiv._napari.live_view import LiveView
    from napari_niiv.inference.weights import load_weights

    src, translation = make_input(tmp_path, volume)
    voxel, first = _expected(volume.shape, translation)

    # 1. the CLI's OME-Zarr, read three ways
    out = tmp_path / "cli.ome.zarr"
    args = ["reconstruct", src, out, "--weights", weights, "--orientation", "xz", "--precision", "fp32"]
    assert main([str(a) for a in (*args, "--levels", "1", "--device", "cpu")]) == 0
    viewer = make_napari_viewer()
    cli = viewer.open(str(out), plugin=PLUGIN)[0]
    _same_place(cli.scale, cli.translate, voxel, first, "CLI output, plugin reader")
    assert [str(u) for u in cli.units] == ["nanometer"] * 3 and tuple(cli.axis_labels) == ("z", "y", "x")
    other = viewer.open(str(out), plugin="napari-ome-zarr")[0]
    _same_place(other.scale, other.translate, voxel, first, "CLI output, napari-ome-zarr")
    scale, shift, units = _ome_zarr_py(out)
    _same_place(scale, shift, voxel, first, "CLI output, ome-zarr-py")
    assert units == ["nanometer"] * 3
    cli_data = np.asarray(cli.data)

    # 2. the input through the plugin's reader, then the lazy layer over it
    layer = viewer.open(str(src), plugin=PLUGIN)[0]
    _same_place(layer.scale, layer.translate, VOXEL, translation, "input layer")
    lazy = add_isotropic_layer(viewer, layer, SETTINGS, weights=str(weights))
    _same_place(lazy.scale, lazy.translate, voxel, first, "lazy layer")
    assert [str(u) for u in lazy.units] == ["nanometer"] * 3

    # 3. its saved copy: same place, same values as the CLI's
    saved_path = tmp_path / "saved.ome.zarr"
    viewer.layers.selection = {lazy}
    viewer.layers.save(str(saved_path), selected=True, plugin=PLUGIN)
    saved = viewer.open(str(saved_path), plugin=PLUGIN)[0]
    _same_place(saved.scale, saved.translate, voxel, first, "saved lazy layer")
    saved_data = np.asarray(saved.data[0] if saved.multiscale else saved.data)
    assert saved_data.shape == cli_data.shape
    assert np.abs(saved_data.astype(int) - cli_data.astype(int)).max() <= 1  # uint8 rounding

    # 4. the live layer of an xz view at one output pixel per isotropic voxel
    for extra in (lazy, saved, cli, other):
        extra.visible = False
    viewer.dims.order = (1, 0, 2)  # z rows, x columns, y sliced
    plane = 17
    viewer.dims.set_point(1, translation[1] + plane * VOXEL[1])
    viewer.reset_view()
    viewer.scene.camera.zoom = 1.0 / VOXEL[2]  # one screen pixel per isotropic voxel
    live = LiveView(viewer, layer, load_weights(weights).model, SETTINGS)
    try:
        qtbot.waitUntil(lambda: bool(live.timings) and "niiv" in live.timings[-1] and not live.busy, timeout=120_000)
        image = live.output
        for axis in (0, 2):
            assert image.scale[axis] == pytest.approx(voxel[axis])
            offset = (image.translate[axis] - first[axis]) / voxel[axis]  # on the output's lattice
            assert offset == pytest.approx(round(offset), abs=1e-6)
        assert image.translate[1] == pytest.approx(first[1] + plane * voxel[1], abs=1e-6 * voxel[1])
        z0, x0 = (round((image.translate[a] - first[a]) / voxel[a]) for a in (0, 2))
        nz, nx = image.data.shape[0], image.data.shape[2]
        overlap = cli_data[z0 : z0 + nz, plane, x0 : x0 + nx].astype(np.float32)
        assert overlap.size > 0.5 * cli_data[:, plane, :].size
        np.testing.assert_allclose(np.asarray(image.data)[:, 0, :], overlap, atol=0.51)  # float vs uint8
    finally:
        live.close()
