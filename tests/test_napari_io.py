"""napari reader, writer and sample data, through napari itself (plugin discovered from its manifest)."""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_niiv._napari import sample_data
from napari_niiv._napari.reader import contrast_limits, get_reader
from napari_niiv._napari.writer import WriterRefused, write_ome_zarr
from napari_niiv.data import fit_normalisation, open_volume
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.store import ArrayBlocks, Layout
from napari_niiv.inference.store import write_ome_zarr as write_store

from .conftest import DATA_DIR, data_path, write_tif

PLUGIN = "napari-niiv"


def volume(shape: tuple[int, int, int] = (8, 16, 20), dtype: type = np.uint16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4000, shape).astype(dtype)


def imagej_tif(path: Path, data: np.ndarray, z: float, xy: float) -> Path:
    """An ImageJ hyperstack: z spacing in the description, xy in the resolution tags (pixels per unit)."""
    write_tif(path, data, imagej=True, resolution=(1 / xy, 1 / xy), metadata={"spacing": z, "unit": "um"})
    return path


def ome_store(path: Path, data: np.ndarray, voxel: tuple[float, float, float], translation=None) -> Path:
    layout = Layout(data.shape, data.dtype, voxel_size=voxel, unit="nanometer", translation=translation)
    return write_store(path, layout, ArrayBlocks(data)).path


@pytest.mark.slow  # a napari viewer
def test_viewer_opens_tiff_lazily_with_voxel_sizes(make_napari_viewer, tmp_path: Path) -> None:
    data = volume()
    path = imagej_tif(tmp_path / "stack.tif", data, z=2.0, xy=0.5)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin=PLUGIN)
    assert isinstance(layer.data, da.Array)
    np.testing.assert_array_equal(layer.data.compute(), data)
    np.testing.assert_allclose(layer.scale, (2.0, 0.5, 0.5))
    norm = fit_normalisation(data)
    np.testing.assert_allclose(layer.contrast_limits, (norm.low, norm.high))
    assert layer.metadata == {"unit": "micrometer", "niiv_source": str(path)}
    assert layer.name == "stack"


@pytest.mark.slow  # a napari viewer
def test_viewer_opens_ome_zarr_lazily_with_scale_and_translation(make_napari_viewer, tmp_path: Path) -> None:
    data = volume(dtype=np.uint8)
    path = ome_store(tmp_path / "crop.ome.zarr", data, (40.0, 4.0, 4.0), translation=(80.0, 0.0, 12.0))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin=PLUGIN)
    assert isinstance(layer.data, da.Array)
    np.testing.assert_array_equal(layer.data.compute(), data)
    np.testing.assert_allclose(layer.scale, (40.0, 4.0, 4.0))
    np.testing.assert_allclose(layer.translate, (80.0, 0.0, 12.0))
    norm = fit_normalisation(data)
    np.testing.assert_allclose(layer.contrast_limits, (norm.low, norm.high))
    assert layer.metadata["unit"] == "nanometer"


@pytest.mark.slow  # a napari viewer
def test_niiv_reconstruct_pyramid_opens_in_napari_at_the_isotropic_scale(
    make_napari_viewer, tmp_path: Path, medulla: np.ndarray
) -> None:
    """The command line's OME-Zarr, pyramid and region offset included, through napari's reader."""
    from napari_niiv.cli import main
    from napari_niiv.inference.weights import save_weights

    from .conftest import random_model

    src = tmp_path / "aniso.tif"
    write_tif(
        src, medulla[:8, :40, :36], imagej=True, resolution=(1 / 4, 1 / 4), metadata={"spacing": 40, "unit": "nm"}
    )
    weights = save_weights(tmp_path / "w.safetensors", random_model(), 10.0, None, card={"architecture": "v2"})
    out = tmp_path / "iso.ome.zarr"
    args = [
        "reconstruct",
        src,
        out,
        "--weights",
        weights,
        "--levels",
        "3",
        "--chunks",
        "32,32,32",
        "--region",
        "2:8,8:40,:",
    ]
    assert main([str(a) for a in args]) == 0
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(out), plugin=PLUGIN)
    assert layer.multiscale and [lv.shape for lv in layer.data] == [(60, 32, 36), (30, 16, 18), (15, 8, 9)]
    np.testing.assert_allclose(layer.scale, (4.0, 4.0, 4.0))
    # Pixel centres: section 2 (40 nm) covers [60, 100] nm; 4 nm output voxels tile it from 60, so the
    # first sits at 62 (y and x keep 4 nm voxels: the region's first centre, 8 * 4 = 32, and 0).
    np.testing.assert_allclose(layer.translate, (62.0, 32.0, 0.0))
    assert layer.metadata["unit"] == "nanometer"
    np.testing.assert_array_equal(layer.data[1], open_volume(out).pyramid[0])


def test_what_the_plugin_claims(tmp_path: Path) -> None:
    """docs/reading.md: TIFFs and OME-Zarr (folders and URLs) are offered to niiv beside napari's own
    reader, and get_reader takes every 3D grey volume among them, with or without voxel sizes."""
    from napari.plugins import _initialize_plugins
    from napari.plugins._npe2 import get_readers

    _initialize_plugins()
    store = ome_store(tmp_path / "em.ome.zarr", volume(dtype=np.uint8), (40.0, 4.0, 4.0))
    for path in ("a.tif", "a.TIFF", "a.ome.tif", "http://127.0.0.1:1/em.ome.zarr", "s3://bucket/em.zarr/", str(store)):
        assert {"napari", PLUGIN} <= set(get_readers(path)), path
    for path in ("a.npy", "a.png", "a.h5"):
        assert PLUGIN not in get_readers(path), path
    write_tif(tmp_path / "plain.tif", volume())  # no voxel sizes: still a volume niiv opens lazily
    assert get_reader(str(tmp_path / "plain.tif")) is not None
    assert get_reader(str(store)) is not None
    # a store whose folder is not named .zarr (viewer.open(path, plugin="napari-niiv")) was declined
    import shutil

    renamed = shutil.copytree(store, tmp_path / "storefolder")
    assert get_reader(str(renamed)) is not None and get_reader(str(tmp_path)) is None


def test_reader_declines_what_napari_should_open(tmp_path: Path) -> None:
    write_tif(tmp_path / "plane.tif", volume()[0])
    write_tif(tmp_path / "rgb.tif", np.zeros((4, 16, 16, 3), np.uint8), photometric="rgb")
    np.save(tmp_path / "vol.npy", volume())
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("a", shape=(4, 4, 4), dtype="u1")
    stack = imagej_tif(tmp_path / "stack.tif", volume(), 2.0, 0.5)
    assert get_reader(str(tmp_path / "plane.tif")) is None
    assert get_reader(str(tmp_path / "rgb.tif")) is None
    assert get_reader(str(tmp_path / "vol.npy")) is None  # napari opens .npy itself
    assert get_reader(str(tmp_path / "plain.zarr")) is None  # a group without OME metadata
    assert get_reader(str(tmp_path / "missing.tif")) is None
    assert get_reader([str(stack), str(stack)]) is None
    assert get_reader([str(stack)]) is not None
    # one plane stored as a stack (a 2D OME-Zarr, a (1, y, x) TIFF) was claimed as a volume
    one = ome_store(tmp_path / "one.ome.zarr", volume((1, 16, 16), np.uint8), (40.0, 4.0, 4.0))
    write_tif(tmp_path / "one.tif", volume((1, 16, 16)), imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})
    assert get_reader(str(one)) is None and get_reader(str(tmp_path / "one.tif")) is None
    # from a URL niiv reads OME-Zarr only: a remote TIFF was claimed, then failed as "not a zarr store"
    assert get_reader("http://127.0.0.1:1/stack.tif") is None


def test_constant_volume_still_gets_a_window() -> None:
    assert contrast_limits(da.zeros((4, 8, 8), dtype=np.uint8)) == [0.0, 255.0]
    assert contrast_limits(np.full((4, 8, 8), 3.0, np.float32)) == [0.0, 1.0]
    assert contrast_limits(np.full((4, 8, 8), np.nan, np.float32)) == [0.0, 1.0]


def test_a_float_volume_with_a_nan_background_gets_the_window_of_its_values() -> None:
    """It opened at [0, 1] (a volume of 0-1000 shown saturated) because its NaN failed the fit."""
    vol = np.linspace(0, 1000, 8 * 32 * 32, dtype=np.float32).reshape(8, 32, 32)
    vol[:, :8, :8] = np.nan
    low, high = contrast_limits(vol)
    finite = vol[np.isfinite(vol)]
    assert np.percentile(finite, 0.01) - 1 < low < 10 and 990 < high <= 1000


@pytest.mark.slow  # a napari viewer
def test_writer_round_trip_through_napari(make_napari_viewer, tmp_path: Path) -> None:
    # 70 planes: more than one block along z, so blocks are stitched.
    data = da.from_array(volume((70, 12, 10)), chunks=(16, 12, 10))
    viewer = make_napari_viewer()
    layer = viewer.add_image(
        data, scale=(40.0, 4.0, 4.0), translate=(120.0, -8.0, 4.0), metadata={"unit": "nanometer"}, name="vol"
    )
    viewer.layers.selection = {layer}
    out = tmp_path / "saved.ome.zarr"
    assert viewer.layers.save(str(out), selected=True, plugin=PLUGIN) == [str(out)]

    [back] = viewer.open(str(out), plugin=PLUGIN)
    np.testing.assert_array_equal(back.data.compute(), data.compute())
    np.testing.assert_allclose(back.scale, layer.scale)
    np.testing.assert_allclose(back.translate, layer.translate)
    vol = open_volume(out)
    np.testing.assert_array_equal(vol.data.compute(), data.compute())
    assert vol.voxel_size == (40.0, 4.0, 4.0) and vol.unit == "nanometer"

    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    other = viewer.add_image(np.zeros((2, 3, 4), np.uint8))
    viewer.layers.selection = {other}
    with pytest.raises(FileExistsError, match=r"already exists.*another name"):
        viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*")) == before


def niiv_writer():
    """The writer napari's Save dialog passes on when the user picks "OME-Zarr (niiv)"."""
    from npe2 import PluginManager

    [writer] = PluginManager.instance().get_manifest(PLUGIN).contributions.writers
    return writer


@pytest.mark.slow  # a napari viewer
def test_writer_saves_ngff05_where_napari_shows_the_layer(make_napari_viewer, tmp_path: Path) -> None:
    """scale, translate, a diagonal affine (folded in), units and the contrast window all survive."""
    from napari_niiv.inference.store import validate_store

    data = volume((6, 12, 10))
    viewer = make_napari_viewer()
    affine = np.diag([20.0, 4.0, 4.0, 1.0])
    affine[0, 3] = 5.0
    layer = viewer.add_image(
        data,
        scale=(2.0, 1.0, 1.0),
        translate=(1.0, 2.0, 3.0),
        affine=affine,
        units=("um", "um", "um"),
        contrast_limits=(100, 3000),
        name="cells",
    )
    viewer.layers.selection = {layer}
    out = tmp_path / "cells.ome.zarr"
    assert viewer.layers.save(str(out), selected=True, plugin=PLUGIN) == [str(out)]
    assert validate_store(out).attributes.ome.version == "0.5"
    vol = open_volume(out)
    assert vol.voxel_size == (40.0, 4.0, 4.0) and vol.translation == (25.0, 8.0, 12.0)
    assert vol.unit == "micrometer" and vol.contrast == (100.0, 3000.0)
    [back] = viewer.open(str(out), plugin=PLUGIN)
    for index in [(0, 0, 0), (5, 11, 9)]:
        np.testing.assert_allclose(back.data_to_world(index), layer.data_to_world(index))
    np.testing.assert_allclose(back.contrast_limits, (100, 3000))
    assert [str(u) for u in back.units] == ["micrometer"] * 3


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        # napari's Layers > Transform menu cannot reset them: the message says what can
        ({"rotate": [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]}, "is rotated or sheared.*layer.rotate = 0"),
        ({"shear": (0.5, 0.0, 0.0)}, "is rotated or sheared"),
        ({"affine": [[1, 0, 0, 0], [0, 0.8, 0.6, 0], [0, -0.6, 0.8, 0], [0, 0, 0, 1]]}, "affine transform rotates"),
        ({"scale": (-1.0, 1.0, 1.0)}, "needs positive voxel sizes"),
    ],
)
@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing:UserWarning")  # napari, on building the layer
def test_writer_refuses_what_ome_zarr_cannot_place(tmp_path: Path, transform: dict, message: str) -> None:
    """With the state napari hands its writers (a layer outside a viewer: rotated layers upset the
    test canvas, not the writer)."""
    from napari.layers import Image

    data, state, _ = Image(volume((4, 8, 8)), **transform).as_layer_data_tuple()
    with pytest.raises(WriterRefused, match=message):
        write_ome_zarr(str(tmp_path / "turned.ome.zarr"), data, state)
    assert not list(tmp_path.iterdir())


def test_writer_rejects_2d_and_rgb(make_napari_viewer, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    viewer.layers.selection = {viewer.add_image(np.zeros((16, 16), np.uint8))}
    # What the Save dialog does (the private _writer is how it passes the chosen format).
    with pytest.raises(WriterRefused, match=r"3D \(z, y, x\).*shape \(16, 16\)"):
        viewer.layers.save(str(tmp_path / "plane.ome.zarr"), selected=True, _writer=niiv_writer())
    # naming the plugin: napari turns a writer's ValueError into "not a valid writer", losing why
    with pytest.raises(WriterRefused, match=r"3D \(z, y, x\).*shape \(16, 16\)"):
        viewer.layers.save(str(tmp_path / "plane.ome.zarr"), selected=True, plugin="napari-niiv")
    with pytest.raises(WriterRefused, match=r"\(RGB\)"):
        write_ome_zarr(str(tmp_path / "rgb.ome.zarr"), np.zeros((16, 16, 3), np.uint8), {"rgb": True})
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_no_store(tmp_path: Path) -> None:
    def fail_after_first(block: np.ndarray, block_info=None) -> np.ndarray:
        if block_info[0]["chunk-location"][0] > 0:
            raise RuntimeError("disk full")
        return block

    data = da.zeros((70, 8, 8), dtype=np.uint8, chunks=(64, 8, 8)).map_blocks(fail_after_first, dtype=np.uint8)
    out = tmp_path / "broken.ome.zarr"
    with pytest.raises(RuntimeError, match="disk full"):
        write_ome_zarr(str(out), data, {"scale": (1, 1, 1)})
    assert not list(tmp_path.iterdir())


def test_multiscale_layer_writes_itself_or_its_finest_level(tmp_path: Path) -> None:
    class SelfWriting:
        """Stands in for niiv's lazy isotropic level: it owns the full reconstruction."""

        shape, dtype, ndim = (8, 8, 8), np.dtype(np.uint8), 3

        def __init__(self) -> None:
            self.written: list[str] = []

        def write_ome_zarr(self, path: str, contrast: tuple[float, float] | None = None) -> None:
            self.written.append((path, contrast))

    level = SelfWriting()
    out = str(tmp_path / "iso.ome.zarr")
    assert write_ome_zarr(out, [level, np.zeros((4, 4, 4))], {"contrast_limits": [2, 9]}) == [out]
    assert level.written == [(out, (2.0, 9.0))]  # the layer's window goes with it

    levels = [volume((8, 8, 8)), volume((4, 4, 4))]
    out = str(tmp_path / "levels.ome.zarr")
    write_ome_zarr(out, levels, {"scale": (2.0, 1.0, 1.0), "metadata": {}})
    vol = open_volume(out)
    np.testing.assert_array_equal(vol.data.compute(), levels[0])
    assert vol.voxel_size == (2.0, 1.0, 1.0) and vol.unit is None


@pytest.mark.slow  # a napari viewer
def test_fibsem_sample_is_pooled_real_data_over_its_ground_truth(make_napari_viewer, monkeypatch) -> None:
    monkeypatch.setenv("NIIV_DATA_DIR", str(DATA_DIR))
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "fibsem_anisotropic")
    truth, pooled = viewer.layers["medulla_b isotropic (ground truth)"], viewer.layers["medulla_b pooled x8"]
    assert viewer.layers.selection.active is pooled
    assert truth.data.shape == (250, 250, 250) and pooled.data.shape == (31, 250, 250)  # floor(250 / 8)
    np.testing.assert_allclose(truth.scale, (10, 10, 10))
    np.testing.assert_allclose(pooled.scale, (80, 10, 10))
    assert not truth.visible and pooled.visible
    np.testing.assert_allclose(pooled.contrast_limits, truth.contrast_limits)
    assert pooled.metadata["unit"] == "nanometer" and "Creative Commons Attribution" in pooled.metadata["licence"]
    # napari's own units too (the scale bar, and every layer niiv makes from it agrees)
    assert [str(u) for u in truth.units] == [str(u) for u in pooled.units] == ["nanometer"] * 3
    # Pooled plane i is the mean of isotropic planes 8i..8i+7 and sits at their centre in world space.
    iso = np.asarray(truth.data, dtype=np.float32)
    np.testing.assert_allclose(pooled.data[3], iso[24:32].mean(0), atol=1e-4)
    np.testing.assert_allclose(pooled.data_to_world((3, 0, 0))[0], truth.data_to_world((24 + 3.5, 0, 0))[0])


@pytest.mark.slow  # a napari viewer
def test_the_dock_offers_the_samples_pooled_layer_not_its_hidden_ground_truth(make_napari_viewer, monkeypatch) -> None:
    """Docked before or after the sample opens, the dock's volume is the layer to reconstruct (the
    active, visible one), until the user picks another: then new layers leave the choice alone."""
    monkeypatch.setenv("NIIV_DATA_DIR", str(DATA_DIR))
    for dock_first in (True, False):
        viewer = make_napari_viewer()
        if dock_first:
            _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "niiv isotropic view")
        viewer.open_sample(PLUGIN, "fibsem_anisotropic")
        if not dock_first:
            _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "niiv isotropic view")
        truth, pooled = viewer.layers["medulla_b isotropic (ground truth)"], viewer.layers["medulla_b pooled x8"]
        assert widget.volume_choice.value is pooled
        assert "ground truth" not in str(widget.status_label.value)
    widget.volume_choice.value = truth  # the user's choice stays when a layer is added
    viewer.add_image(np.zeros((4, 16, 16), np.uint8), name="another", scale=(8, 1, 1))
    assert widget.volume_choice.value is truth
    viewer.layers.remove(truth)  # ...until it is closed: then new layers are offered again
    late = viewer.add_image(np.zeros((4, 16, 16), np.uint8), name="late", scale=(8, 1, 1))
    assert widget.volume_choice.value is late


@pytest.mark.slow  # a napari viewer
def test_epfl_sample_is_anisotropic_em(make_napari_viewer, monkeypatch) -> None:
    monkeypatch.setenv("NIIV_DATA_DIR", str(DATA_DIR))
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "epfl_hippocampus")
    [layer] = viewer.layers
    assert layer.data.shape == (32, 256, 256) and layer.data.dtype == np.uint8
    np.testing.assert_allclose(layer.scale, (40, 5, 5))
    assert [str(u) for u in layer.units] == ["nanometer"] * 3
    norm = fit_normalisation(layer.data)
    np.testing.assert_allclose(layer.contrast_limits, (norm.low, norm.high))
    assert layer.metadata["licence"] == "terms not stated by the distributor; for evaluation only"


def test_pinned_hash_is_the_shared_cube() -> None:
    iso = tifffile.imread(data_path("fibsem", "medulla_b.tif"))
    assert iso.shape == (250, 250, 250) and iso.dtype == np.uint8
    assert sample_data.array_sha256(iso) == sample_data.MEDULLA_B_SHA256


def test_download_slices_in_stacking_order() -> None:
    urls = sample_data.fibsem_urls()
    assert len(urls) == 250 and len(set(urls)) == 250
    commit = "ce839e17deaf4c01153827c6d028dfecfbb4b958"
    assert urls[0] == (
        f"https://raw.githubusercontent.com/janelia-flyem/neuroproof_examples/{commit}/"
        "training_sample2/grayscale_maps/iso.2600.png"
    )
    assert urls[-1].endswith("/iso.2849.png")
    assert [int(u.rsplit(".", 2)[1]) for u in urls] == list(range(2600, 2850))


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
def test_download_path_end_to_end_from_a_local_server(tmp_path: Path, monkeypatch) -> None:
    """The real download code (pooch, cache, stacking, hash check) against the slices served locally as PNGs,
    since there is no network here; then a corrupted cached slice is caught and the cache dropped."""
    import imageio.v3 as iio

    iso = tifffile.imread(data_path("fibsem", "medulla_b.tif"))
    served = tmp_path / "served"
    served.mkdir()
    for z, plane in zip(range(2600, 2850), iso, strict=True):
        iio.imwrite(served / f"iso.{z}.png", plane)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(sample_data, "_FIBSEM_BASE", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # pooch.os_cache follows it
    monkeypatch.delenv("NIIV_DATA_DIR", raising=False)
    cache = tmp_path / "cache" / "napari-niiv" / "medulla_b"
    try:
        [(truth, _, _), (pooled, meta, _)] = sample_data.fibsem_anisotropic()
        np.testing.assert_array_equal(truth, iso)
        assert pooled.shape == (31, 250, 250) and meta["metadata"]["niiv_source"].startswith("http://127.0.0.1")
        assert len(list(cache.glob("iso.*.png"))) == 250
        iio.imwrite(cache / "iso.2700.png", iso[0])  # a slice that is not what was pinned
        with pytest.raises(NiivInputError, match="pinned sha256"):
            sample_data.fibsem_anisotropic()
        assert not cache.exists()
    finally:
        server.shutdown()
        server.server_close()
    # no server (no network): one message saying what to do, not the HTTP library's traceback
    with pytest.raises(NiivInputError, match=r"could not be downloaded .*NIIV_DATA_DIR .*fibsem/medulla_b\.tif"):
        sample_data.fibsem_anisotropic()


def test_verify_stack_drops_a_bad_download(tmp_path: Path) -> None:
    iso = tifffile.imread(data_path("fibsem", "medulla_b.tif"))
    folder = tmp_path / "medulla_b"
    folder.mkdir()
    (folder / "iso.2600.png").write_bytes(b"png")
    assert sample_data.verify_stack(iso, folder) is iso
    assert folder.exists()
    bad = iso.copy()
    bad[0, 0, 0] ^= 1
    with pytest.raises(NiivInputError, match=r"do not match the pinned sha256.*deleted"):
        sample_data.verify_stack(bad, folder)
    assert not folder.exists()
    with pytest.raises(NiivInputError, match="pinned sha256"):
        sample_data.verify_stack(None, folder)


def test_data_dir_comes_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NIIV_DATA_DIR", raising=False)
    assert sample_data.local_data_dir() is None
    monkeypatch.setenv("NIIV_DATA_DIR", str(tmp_path))
    assert sample_data.local_data_dir() == tmp_path


def test_the_stores_name_keeps_the_dots_of_its_file_name(tmp_path: Path) -> None:
    """The writer named my.data.v2.ome.zarr's image "my" (found by the reader audit)."""
    out = tmp_path / "my.data.v2.ome.zarr"
    write_ome_zarr(str(out), volume((4, 8, 8)), {"scale": (2.0, 1.0, 1.0), "metadata": {}})
    attrs = zarr.open_group(str(out), mode="r").attrs.asdict()
    assert attrs["ome"]["multiscales"][0]["name"] == "my.data.v2"
