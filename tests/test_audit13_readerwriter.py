"""Audit 13 (reader and writer with odd files): what the napari reader claims and how it places it,
and where the writer refuses to write, through napari's own reader and writer machinery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_niiv._napari.reader import get_reader
from napari_niiv.data.io import open_volume
from napari_niiv.errors import NiivInputError

from .conftest import write_tif

PLUGIN = "napari-niiv"


def volume(shape: tuple[int, ...] = (8, 16, 20)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 250, shape).astype(np.uint8)


def ngff_store(path: Path, axes: list[dict], data: np.ndarray, scale: list[float], translation=None, ngff="0.4"):
    """An OME-Zarr image of one level with these axes, written by hand (axes in any order)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2 if ngff == "0.4" else 3)
    group.create_array("0", shape=data.shape, dtype=data.dtype)[:] = data
    transforms = [{"type": "scale", "scale": scale}]
    if translation is not None:
        transforms.append({"type": "translation", "translation": translation})
    multiscale = {"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transforms}]}
    if ngff == "0.4":
        group.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    return path


def space(name: str, unit: str | None = None) -> dict:
    return {"name": name, "type": "space", **({"unit": unit} if unit else {})}


def test_a_tiff_of_frames_or_channels_is_not_taken_for_a_z_stack(tmp_path: Path) -> None:
    # a 2D time-lapse (ImageJ frames, OME T) or a 2D multichannel OME-TIFF has three axes like a
    # z-stack: niiv claimed them and would reconstruct "between" frames or channels
    data = volume()
    write_tif(tmp_path / "frames.tif", data, imagej=True, metadata={"axes": "TYX", "finterval": 0.5})
    write_tif(tmp_path / "t.ome.tif", data, metadata={"axes": "TYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    write_tif(tmp_path / "c.ome.tif", data[:3], metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    for name, what in (("frames.tif", "8 time points"), ("t.ome.tif", "8 time points"), ("c.ome.tif", "3 channels")):
        assert get_reader(str(tmp_path / name)) is None, name  # napari's own reader takes it
        with pytest.raises(NiivInputError, match=what):
            open_volume(tmp_path / name)
    # tifffile writes every ImageJ 3D array given without axes as channels: still a z-stack
    write_tif(tmp_path / "plain_ij.tif", data, imagej=True, metadata={"spacing": 2.0, "unit": "um"})
    assert open_volume(tmp_path / "plain_ij.tif").voxel_size == (2.0, 1.0, 1.0)


@pytest.mark.slow  # a napari viewer
def test_a_pyramidal_compressed_ome_tiff_opens_at_full_resolution(make_napari_viewer, tmp_path: Path) -> None:
    # QuPath / bfconvert write pyramids as SubIFDs, compressed: niiv said "could not read it ...
    # the file may be damaged" (tifffile's zarr store of it is a group of levels, not an array)
    data = volume((8, 32, 40))
    path = tmp_path / "pyramid.ome.tif"
    meta = {"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5}
    with tifffile.TiffWriter(path) as tif:
        tif.write(data, subifds=1, metadata=meta, compression="zlib", photometric="minisblack")
        tif.write(data[:, ::2, ::2], subfiletype=1, compression="zlib", photometric="minisblack")
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin=PLUGIN)
    assert layer.data.shape == data.shape
    np.testing.assert_array_equal(np.asarray(layer.data[3]), data[3])
    assert tuple(layer.scale) == (2.0, 0.5, 0.5) and str(layer.units[0]) == "micrometer"
