"""Voxel sizes, translation and units read in: OME-Zarr 0.4 and 0.5 (ours, ome-zarr-py's, hand-made,
over HTTP), OME-TIFF and ImageJ TIFF; unusable voxel sizes refused with a message that says what to do."""

from __future__ import annotations

import re
import socket
import threading
import warnings
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_niiv._napari.reader import get_reader
from napari_niiv.data.io import ngff_unit, open_volume
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.store import ArrayBlocks, Layout, write_ome_zarr

from .conftest import write_tif

PLUGIN = "napari-niiv"


def volume(shape=(8, 32, 24), dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4000, shape).astype(dtype)


def foreign_store(path: Path, data: np.ndarray) -> Path:
    """NGFF 0.5 as ome-zarr-py writes it: paths s0, s1, z/y/x in micrometres, block-mean pyramid."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    with warnings.catch_warnings():  # ome-zarr 0.18 builds a deprecated default Scaler it does not use
        warnings.filterwarnings("ignore", "Call to deprecated class Scaler", DeprecationWarning)
        from ome_zarr.format import FormatV05
        from ome_zarr.scale import Methods
        from ome_zarr.writer import write_image

        write_image(
            data,
            group,
            scale={"z": 2.0, "y": 0.5, "x": 0.5},
            scale_factors=[{"z": 2, "y": 2, "x": 2}],
            axes="zyx",
            axes_units={a: "micrometer" for a in "zyx"},
            method=Methods.LOCAL_MEAN,
            fmt=FormatV05(),
        )
    return path


def test_ngff05_store_from_ome_zarr_py_opens_with_its_geometry(tmp_path: Path) -> None:
    data = volume()
    vol = open_volume(foreign_store(tmp_path / "cells.ome.zarr", data))
    assert vol.voxel_size == (2.0, 0.5, 0.5) and vol.unit == "micrometer" and vol.translation == (0.0, 0.0, 0.0)
    assert vol.name == "cells" and vol.alpha == 4.0 and vol.has_voxel_size
    assert isinstance(vol.data, da.Array)
    np.testing.assert_array_equal(vol.data.compute(), data)
    assert [lv.shape for lv in vol.pyramid] == [(4, 16, 12)]


@pytest.mark.slow
def test_napari_reader_places_a_foreign_ngff05_store(make_napari_viewer, tmp_path: Path) -> None:
    data = volume()
    path = foreign_store(tmp_path / "cells.ome.zarr", data)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin=PLUGIN)
    assert layer.multiscale and [lv.shape for lv in layer.data] == [(8, 32, 24), (4, 16, 12)]
    np.testing.assert_allclose(layer.scale, (2.0, 0.5, 0.5))
    np.testing.assert_allclose(layer.translate, (0.0, 0.0, 0.0))
    assert [str(u) for u in layer.units] == ["micrometer"] * 3
    assert tuple(layer.axis_labels) == ("z", "y", "x")
    np.testing.assert_array_equal(np.asarray(layer.data[0]), data)


def test_multiscale_wide_transforms_and_mixed_units_compose(tmp_path: Path) -> None:
    """world = s_ms * (s_ds * i + t_ds) + t_ms, per axis; z in micrometres and y, x in nanometres come
    out in one unit (the x axis's)."""
    data = volume((4, 8, 8))
    path = tmp_path / "mixed.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", data=data, dimension_names=("z", "y", "x"))
    dataset = [{"type": "scale", "scale": [0.02, 5.0, 5.0]}, {"type": "translation", "translation": [0.1, 2.0, 3.0]}]
    global_ = [{"type": "scale", "scale": [2.0, 1.0, 1.0]}, {"type": "translation", "translation": [1.0, 0.0, -7.0]}]
    units = ["micrometer", "nanometer", "nanometer"]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": a, "type": "space", "unit": u} for a, u in zip("zyx", units, strict=True)],
                "datasets": [{"path": "0", "coordinateTransformations": dataset}],
                "coordinateTransformations": global_,
            }
        ],
    }
    vol = open_volume(path)
    assert vol.unit == "nanometer"
    assert vol.voxel_size == pytest.approx((40.0, 5.0, 5.0))
    assert vol.translation == pytest.approx((1200.0, 2.0, -4.0))  # z: (2 * 0.1 + 1) µm


def test_time_and_channel_singletons_are_dropped_from_a_5d_store(tmp_path: Path) -> None:
    data = volume((4, 8, 8))
    path = tmp_path / "tczyx.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", data=data[None, None])
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
    axes += [{"name": a, "type": "space", "unit": "um"} for a in "zyx"]
    transforms = [{"type": "scale", "scale": [1.0, 1.0, 3.0, 1.5, 1.5]}]
    group.attrs["multiscales"] = [
        {"version": "0.4", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transforms}]}
    ]
    vol = open_volume(path)
    assert vol.shape == (4, 8, 8) and vol.voxel_size == (3.0, 1.5, 1.5) and vol.unit == "micrometer"


def test_ome_tiff_physical_sizes_and_units(tmp_path: Path) -> None:
    path = tmp_path / "sections.ome.tif"
    meta = {"axes": "ZYX", "PhysicalSizeZ": 0.04, "PhysicalSizeZUnit": "\u00b5m"}
    meta |= {"PhysicalSizeY": 4, "PhysicalSizeYUnit": "nm", "PhysicalSizeX": 4, "PhysicalSizeXUnit": "nm"}
    tifffile.imwrite(path, volume((4, 16, 16)), ome=True, photometric="minisblack", metadata=meta)
    vol = open_volume(path)
    assert vol.voxel_size == pytest.approx((40.0, 4.0, 4.0)) and vol.unit == "nanometer"
    assert vol.name == "sections" and vol.alpha == pytest.approx(10.0)

    # No unit attributes: OME's default is micrometres.
    tifffile.imwrite(
        path,
        volume((4, 16, 16)),
        ome=True,
        photometric="minisblack",
        metadata={"axes": "ZYX", "PhysicalSizeZ": 2, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5},
    )
    vol = open_volume(path)
    assert vol.voxel_size == (2.0, 0.5, 0.5) and vol.unit == "micrometer"

    # Without a z size the anisotropy is unknown: no voxel sizes at all (alpha is then given by hand).
    tifffile.imwrite(
        path, volume((4, 16, 16)), ome=True, photometric="minisblack", metadata={"axes": "ZYX", "PhysicalSizeX": 0.5}
    )
    vol = open_volume(path)
    assert not vol.has_voxel_size and vol.unit is None


@pytest.mark.parametrize(("unit", "ngff"), [("um", "micrometer"), ("micron", "micrometer"), ("nm", "nanometer")])
def test_imagej_spacing_resolution_and_unit(tmp_path: Path, unit: str, ngff: str) -> None:
    path = tmp_path / "stack.tif"
    write_tif(path, volume((4, 16, 16)), imagej=True, resolution=(2, 4), metadata={"spacing": 1.5, "unit": unit})
    vol = open_volume(path)
    assert vol.voxel_size == (1.5, 0.25, 0.5) and vol.unit == ngff  # resolution: pixels per unit (x, y)


def test_fijis_escaped_micrometre_and_a_contiguous_imagej_stack_over_4_gb(tmp_path: Path) -> None:
    """Fiji escapes µ in the description ("\\u00B5m"): the unit was dropped (and light microscopy
    then took EM weights). ImageJ stacks over 4 GB have one page for all planes, stored contiguously
    (tifffile's truncate=True writes them so at any size): they were refused as truncated."""
    data = volume((6, 16, 16))
    write_tif(
        tmp_path / "mu.tif", data, imagej=True, resolution=(10, 10), metadata={"spacing": 0.8, "unit": "\\u00B5m"}
    )
    vol = open_volume(tmp_path / "mu.tif")
    assert vol.unit == "micrometer" and vol.voxel_size == (0.8, 0.1, 0.1)
    big = tmp_path / "big.tif"
    tifffile.imwrite(
        big, data, imagej=True, truncate=True, resolution=(10, 10), metadata={"spacing": 0.8, "unit": "um"}
    )
    with tifffile.TiffFile(big) as tif:
        assert len(tif.pages) == 1  # one page for the six planes, as Fiji writes > 4 GB
    vol = open_volume(big)
    assert vol.shape == (6, 16, 16) and vol.voxel_size == (0.8, 0.1, 0.1)
    np.testing.assert_array_equal(np.asarray(vol.data), data)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(big.read_bytes()[:-100])
    with pytest.raises(NiivInputError, match="truncated"):
        open_volume(cut)


def test_tiffs_without_z_spacing_have_unknown_voxel_sizes(tmp_path: Path) -> None:
    """ImageJ without spacing, and plain TIFFs whose resolution tags are dots per inch."""
    write_tif(tmp_path / "ij.tif", volume((4, 16, 16)), imagej=True, resolution=(2, 2), metadata={"unit": "um"})
    write_tif(tmp_path / "plain.tif", volume((4, 16, 16)), resolution=(72, 72), resolutionunit="INCH")
    for name in ("ij.tif", "plain.tif"):
        vol = open_volume(tmp_path / name)
        assert not vol.has_voxel_size and vol.voxel_size == (1.0, 1.0, 1.0) and vol.unit is None, name


@pytest.mark.parametrize("spacing", [0.0, -40.0, float("nan"), float("inf")])
def test_unusable_imagej_spacing_is_refused(tmp_path: Path, spacing: float) -> None:
    path = tmp_path / "bad.tif"
    write_tif(path, volume((4, 16, 16)), imagej=True, metadata={"spacing": spacing, "unit": "nm"})
    with pytest.raises(NiivInputError, match=r"bad\.tif: the file gives voxel size.*fix the file's metadata"):
        open_volume(path)


@pytest.mark.parametrize("scale", [[0.0, 1.0, 1.0], [1.0, -2.0, 1.0], [1.0, 1.0, float("nan")]])
def test_unusable_ome_zarr_scale_is_refused(tmp_path: Path, scale: list[float]) -> None:
    path = tmp_path / "bad.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", data=volume((4, 8, 8)), dimension_names=("z", "y", "x"))
    ms = {
        "axes": [{"name": a, "type": "space"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }
    group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    with pytest.raises(NiivInputError, match="not usable: each must be a positive finite number"):
        open_volume(path)


def test_unusable_ome_tiff_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.ome.tif"
    meta = {"axes": "ZYX", "PhysicalSizeZ": 1.0, "PhysicalSizeY": 0.0, "PhysicalSizeX": 0.0}
    tifffile.imwrite(path, volume((4, 16, 16)), ome=True, photometric="minisblack", metadata=meta)
    with pytest.raises(NiivInputError, match="fix the file's metadata"):
        open_volume(path)


def test_napari_shows_why_a_file_with_bad_voxel_sizes_does_not_open(make_napari_viewer, tmp_path: Path) -> None:
    """The reader claims it (another reader would open it with wrong sizes, or refuse silently)
    and napari passes the reason on."""
    path = tmp_path / "bad.tif"
    write_tif(path, volume((4, 16, 16)), imagej=True, metadata={"spacing": 0.0})
    assert get_reader(str(path)) is not None
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="voxel size") as info:
        viewer.open(str(path), plugin=PLUGIN)
    assert "fix the file's metadata" in str(info.value)
    assert not viewer.layers


def test_unit_names() -> None:
    assert [ngff_unit(u) for u in ("um", "\u00b5m", "\u03bcm", "micron", "nm", "\u00c5", "nanometres")] == [
        "micrometer",
        "micrometer",
        "micrometer",
        "micrometer",
        "nanometer",
        "angstrom",
        "nanometer",
    ]
    assert ngff_unit("pixel") is None and ngff_unit(None) is None and ngff_unit("furlong") is None
    with pytest.raises(NiivInputError, match="not a length unit"):
        ngff_unit("second", strict=True)


# -- remote stores -----------------------------------------------------------------------------


class LoggingHandler(SimpleHTTPRequestHandler):
    """Serves a folder and records every path asked for."""

    requests: list[str]

    def log_message(self, *args) -> None:
        self.requests.append(self.path)


@pytest.fixture
def served(tmp_path: Path):
    """(folder served, base URL, request log) of an HTTP server on 127.0.0.1."""
    folder = tmp_path / "served"
    folder.mkdir()
    log: list[str] = []
    handler = type("Handler", (LoggingHandler,), {"requests": log})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_port}", log
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
def test_remote_ome_zarr_reads_only_the_chunks_it_needs(served, ngff: str) -> None:
    folder, base, log = served
    data = volume((16, 32, 32))
    layout = Layout(data.shape, data.dtype, (4, 16, 16), (40.0, 4.0, 4.0), "nm", (-18.0, 2.0, 2.0), levels=2, ngff=ngff)
    write_ome_zarr(folder / "em.ome.zarr", layout, ArrayBlocks(data))
    vol = open_volume(f"{base}/em.ome.zarr/")
    assert vol.voxel_size == (40.0, 4.0, 4.0) and vol.translation == (-18.0, 2.0, 2.0) and vol.unit == "nanometer"
    assert vol.name == "em" and [lv.shape for lv in vol.pyramid] == [(8, 16, 16)]
    chunk = "/em.ome.zarr/0/" + ("c/" if ngff == "0.5" else "")

    def chunks_fetched() -> list[str]:
        return sorted({r for r in log if re.fullmatch(re.escape(chunk) + r"\d+/\d+/\d+", r)})

    assert not chunks_fetched(), "opening reads metadata only"
    np.testing.assert_array_equal(vol.data[5].compute(), data[5])
    assert chunks_fetched() == [f"{chunk}1/{y}/{x}" for y in (0, 1) for x in (0, 1)]  # 4 of the 16 level-0 chunks


@pytest.mark.slow
def test_napari_opens_a_remote_store(make_napari_viewer, served) -> None:
    folder, base, _ = served
    data = volume((8, 16, 16))
    layout = Layout(data.shape, data.dtype, voxel_size=(2.0, 0.5, 0.5), unit="um", translation=(1.0, 0.0, 0.0))
    write_ome_zarr(folder / "cells.ome.zarr", layout, ArrayBlocks(data))
    viewer = make_napari_viewer()
    [layer] = viewer.open(f"{base}/cells.ome.zarr", plugin=PLUGIN)
    np.testing.assert_allclose(layer.scale, (2.0, 0.5, 0.5))
    np.testing.assert_allclose(layer.translate, (1.0, 0.0, 0.0))
    assert [str(u) for u in layer.units] == ["micrometer"] * 3
    np.testing.assert_array_equal(np.asarray(layer.data), data)


def test_unreachable_url_says_so() -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/em.ome.zarr"
    with pytest.raises(NiivInputError, match=r"could not open it as a zarr.*check the URL"):
        open_volume(url)
    assert get_reader(url) is not None  # claimed, so that napari shows this message


def test_niiv_info_and_reconstruct_take_a_remote_store(served, tmp_path: Path, medulla, capsys) -> None:
    """The CLI reads an OME-Zarr over HTTP like a local one: info describes it, reconstruct writes
    the same output as from the local copy."""
    from napari_niiv.cli import main
    from napari_niiv.inference.weights import save_weights
    from tests.conftest import random_model

    folder, base, _ = served
    data = medulla[:32, :24, :24].reshape(8, 4, 24, 24).mean(axis=1).astype(np.uint8)
    layout = Layout(data.shape, data.dtype, (4, 24, 24), (16.0, 4.0, 4.0), "nm", (0.0, 0.0, 0.0), levels=1)
    write_ome_zarr(folder / "em.ome.zarr", layout, ArrayBlocks(data))
    weights = save_weights(tmp_path / "tiny.safetensors", random_model(), 4.0, None)
    assert main(["info", f"{base}/em.ome.zarr"]) == 0
    assert "alpha = 4" in capsys.readouterr().out
    outs = []
    for name, src in (("remote", f"{base}/em.ome.zarr"), ("local", str(folder / "em.ome.zarr"))):
        out = tmp_path / f"{name}.npy"
        args = ["reconstruct", src, str(out), "--weights", str(weights), "--precision", "fp32", "--device", "cpu"]
        assert main(args) == 0, capsys.readouterr().err
        outs.append(np.load(out))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_a_damaged_chunk_says_which_store_and_what_to_do(tmp_path: Path) -> None:
    """A chunk file cut short ended in a bare 'Zstd decompression error' traceback (niiv
    reconstruct: 92 lines, exit 1; found by the reader audit)."""
    data = volume((16, 32, 32), np.uint8)
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    root.create_array("0", data=data, chunks=(8, 16, 16), compressors=zarr.codecs.ZstdCodec())
    chunk = next(p for p in sorted((tmp_path / "s.zarr" / "0").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:5])
    vol = open_volume(tmp_path / "s.zarr" / "0")
    with pytest.raises(
        NiivInputError, match=r"s\.zarr/0: part of its data cannot be read .*copy or export the store again"
    ):
        np.asarray(vol.data)
