"""Audit 13 (reader and writer with odd files): what the napari reader claims and how it places it,
and where the writer refuses to write, through napari's own reader and writer machinery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_niiv._napari.reader import get_reader
from napari_niiv._napari.writer import WriterRefused
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


def test_a_2d_ome_zarr_with_channels_or_time_points_is_not_a_z_stack(tmp_path: Path) -> None:
    # a (c, y, x) or (t, y, x) store was claimed as a volume whose channels or frames stood for z
    channels = [{"name": "c", "type": "channel"}, space("y"), space("x")]
    frames = [{"name": "t", "type": "time"}, space("y"), space("x")]
    cyx = ngff_store(tmp_path / "cyx.ome.zarr", channels, volume((3, 16, 20)), [1.0, 0.5, 0.5])
    tyx = ngff_store(tmp_path / "tyx.ome.zarr", frames, volume((5, 16, 20)), [1.0, 0.5, 0.5], ngff="0.5")
    for store, what in ((cyx, "3 along 'c'"), (tyx, "5 along 't'")):
        assert get_reader(str(store)) is None
        with pytest.raises(NiivInputError, match=f"a 2D image with {what}"):
            open_volume(store)
    # a (1, z, y, x) store still opens as its volume
    zyx = ngff_store(
        tmp_path / "czyx.ome.zarr",
        channels[:1] + [space(a) for a in "zyx"],
        volume((1, 8, 16, 20)),
        [1.0, 2.0, 0.5, 0.5],
    )
    assert open_volume(zyx).shape == (8, 16, 20)


@pytest.mark.slow  # a napari viewer
def test_an_ome_zarr_label_image_is_left_to_napari_ome_zarr(make_napari_viewer, tmp_path: Path) -> None:
    # store.ome.zarr/labels/cells (or one of its levels) was opened as an intensity image: niiv
    # would reconstruct segment ids; napari-ome-zarr opens it as a Labels layer
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image, write_labels

    root = zarr.open_group(str(tmp_path / "cells.ome.zarr"), mode="w", zarr_format=3)
    write_image(volume(), root, axes="zyx", fmt=FormatV05())
    write_labels((volume() > 128).astype(np.uint8), root, name="cells", axes="zyx", fmt=FormatV05())
    labels = tmp_path / "cells.ome.zarr" / "labels" / "cells"
    level = next(p for p in labels.iterdir() if p.is_dir())
    assert get_reader(str(labels)) is None and get_reader(str(level)) is None
    with pytest.raises(NiivInputError, match="label image"):
        open_volume(labels)
    assert get_reader(str(tmp_path / "cells.ome.zarr")) is not None  # the image itself still opens
    viewer = make_napari_viewer()
    with pytest.raises(ValueError, match="refused the file"):
        viewer.open(str(labels), plugin=PLUGIN)
    opened = viewer.open(str(labels), plugin="napari-ome-zarr")  # the labels, over the image they label
    assert "Labels" in [type(layer).__name__ for layer in opened]


@pytest.mark.slow  # a napari viewer
@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_spatial_axes_stored_in_another_order_open_as_z_y_x(make_napari_viewer, tmp_path: Path, ngff: str) -> None:
    # NGFF only recommends z, y, x: an (x, y, z) store opened with x labelled z, alpha 0.25, and the
    # reconstruction running along x
    xyz = volume((20, 16, 8))
    axes = [space(a, "micrometer") for a in "xyz"]
    store = ngff_store(tmp_path / "xyz.ome.zarr", axes, xyz, [0.5, 0.25, 2.0], [1.0, 2.0, 3.0], ngff)
    vol = open_volume(store)
    assert vol.voxel_size == (2.0, 0.25, 0.5) and vol.translation == (3.0, 2.0, 1.0) and vol.alpha == 4.0
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(store), plugin=PLUGIN)
    np.testing.assert_array_equal(np.asarray(layer.data), xyz.transpose(2, 1, 0))
    assert tuple(layer.scale) == (2.0, 0.25, 0.5) and tuple(layer.translate) == (3.0, 2.0, 1.0)
    assert tuple(layer.axis_labels) == ("z", "y", "x")


@pytest.mark.slow  # a napari viewer
def test_the_writer_never_writes_into_a_store_or_under_a_file(make_napari_viewer, tmp_path: Path) -> None:
    # layer.save("data.ome.zarr/copy") wrote a new store inside the user's store (a member of its
    # hierarchy: here the very store the layer reads from); under a file it failed with "[Errno 17]"

    viewer = make_napari_viewer()
    first = tmp_path / "data.ome.zarr"
    layer = viewer.add_image(volume(), scale=(2.0, 0.5, 0.5), units=("um",) * 3)
    assert layer.save(str(first), plugin=PLUGIN) == [str(first)]
    [opened] = viewer.open(str(first), plugin=PLUGIN)
    before = sorted(p.relative_to(first) for p in first.rglob("*"))
    with pytest.raises(WriterRefused, match="inside the zarr store"):
        opened.save(str(first / "copy"), plugin=PLUGIN)
    assert sorted(p.relative_to(first) for p in first.rglob("*")) == before
    (tmp_path / "cells.tif").write_bytes(b"user data")
    with pytest.raises(WriterRefused, match="is a file, not a folder"):
        layer.save(str(tmp_path / "cells.tif" / "x.ome.zarr"), plugin=PLUGIN)
    assert (tmp_path / "cells.tif").read_bytes() == b"user data"


@pytest.mark.slow  # a napari viewer
def test_a_damaged_strip_of_a_compressed_tiff_names_the_file(make_napari_viewer, tmp_path: Path) -> None:
    # a compressed TIFF with one damaged strip failed, when napari read that plane, with a bare
    # "DeflateError: libdeflate_zlib_decompress returned LIBDEFLATE_BAD_DATA": no file, no remedy
    path = tmp_path / "damaged.tif"
    write_tif(path, volume((8, 64, 64)), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[3].dataoffsets[0], tif.pages[3].databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = bytes(count)
    path.write_bytes(bytes(raw))
    vol = open_volume(path)  # the header is whole
    np.asarray(vol.data[2])
    with pytest.raises(NiivInputError, match=r"damaged\.tif: part of its data cannot be read .*copy or export it"):
        np.asarray(vol.data[3])
    viewer = make_napari_viewer()
    with pytest.raises(NiivInputError, match=r"damaged\.tif: part of its data cannot be read"):
        viewer.open(str(path), plugin=PLUGIN)  # the contrast limits read a sample of every plane


def niiv_writer():
    from npe2 import PluginManager

    return next(w for w in PluginManager.instance().iter_compatible_writers(["image"]) if w.plugin_name == PLUGIN)


@pytest.mark.slow  # a napari viewer
def test_the_save_dialogs_name_becomes_an_ome_zarr_store_or_is_refused(make_napari_viewer, tmp_path: Path) -> None:
    # File > Save Selected Layers with "OME-Zarr (niiv)" chosen passes the typed name as it is (Qt's
    # dialog adds no suffix): "vol.tif" became an OME-Zarr folder named like a TIFF, "result" a
    # store no reader's pattern matches
    viewer = make_napari_viewer()
    viewer.add_image(volume(), scale=(2.0, 0.5, 0.5))
    with pytest.raises(WriterRefused, match=r"not \.tif files; name it vol\.ome\.zarr"):
        viewer.layers.save(str(tmp_path / "vol.tif"), selected=True, _writer=niiv_writer())
    assert not (tmp_path / "vol.tif").exists()
    saved = viewer.layers.save(str(tmp_path / "result"), selected=True, _writer=niiv_writer())
    assert saved == [str(tmp_path / "result.ome.zarr")] and not (tmp_path / "result").exists()
    assert open_volume(tmp_path / "result.ome.zarr").voxel_size == (2.0, 0.5, 0.5)
    saved = viewer.layers.save(str(tmp_path / "my.data.v2"), selected=True, _writer=niiv_writer())
    assert saved == [str(tmp_path / "my.data.v2.ome.zarr")]


@pytest.mark.slow  # a napari viewer
def test_units_are_converted_without_float_noise_and_never_guessed(make_napari_viewer, tmp_path: Path) -> None:
    # a layer in (mm, um, nm) was published with y 499.99999999999994 nm (1e-6 / 1e-9), and an
    # OME-TIFF with z in um and x in nm read so; a layer with z in um and y, x in 'pixel' was
    # published as all micrometer, the size of the axes without a unit made up
    viewer = make_napari_viewer()
    layer = viewer.add_image(volume(), scale=(3.0, 0.5, 0.25), translate=(0.7, 0.1, 2.0), units=("mm", "um", "nm"))
    out = tmp_path / "mixed.ome.zarr"
    layer.save(str(out), plugin=PLUGIN)
    [transforms] = [
        d["coordinateTransformations"] for d in zarr.open_group(str(out)).attrs["ome"]["multiscales"][0]["datasets"][:1]
    ]
    assert transforms[0]["scale"] == [3000000.0, 500.0, 0.25] and transforms[1]["translation"] == [700000.0, 100.0, 2.0]
    meta = {"axes": "ZYX", "PhysicalSizeZ": 0.5, "PhysicalSizeZUnit": "\u00b5m", "PhysicalSizeY": 4, "PhysicalSizeX": 4}
    write_tif(
        tmp_path / "mixed.ome.tif", volume(), metadata={**meta, "PhysicalSizeYUnit": "nm", "PhysicalSizeXUnit": "nm"}
    )
    assert open_volume(tmp_path / "mixed.ome.tif").voxel_size == (500.0, 4.0, 4.0)
    unitless_xy = viewer.add_image(volume(), scale=(2.0, 1.0, 1.0), units=("um", "pixel", "pixel"))
    with pytest.raises(WriterRefused, match="z micrometer, y pixel"):
        unitless_xy.save(str(tmp_path / "guessed.ome.zarr"), plugin=PLUGIN)
    assert not (tmp_path / "guessed.ome.zarr").exists()


def unfinished_save(out: Path) -> Path:
    """OUT.partial of a resumable save stopped after its first chunk (as Save isotropic volume...
    cancelled, or niiv reconstruct interrupted, leave it)."""
    import dask.array as da

    from napari_niiv.inference.store import ArrayBlocks, Layout
    from napari_niiv.inference.store import write_ome_zarr as write_store

    def fail_after_first(block: np.ndarray, block_info=None) -> np.ndarray:
        if block_info[None]["chunk-location"][0] > 0:
            raise RuntimeError("stopped")
        return block

    source = da.from_array(volume((16, 16, 20)), chunks=(8, 16, 20)).map_blocks(fail_after_first, dtype=np.uint8)
    with pytest.raises(RuntimeError, match="stopped"):
        write_store(out, Layout((16, 16, 20), "|u1"), ArrayBlocks(source), resume=True, fingerprint={"run": 1})
    return out.with_name(out.name + ".partial")


@pytest.mark.slow  # a napari viewer
def test_a_file_save_never_discards_an_unfinished_save_of_the_same_name(make_napari_viewer, tmp_path: Path) -> None:
    # an unfinished resumable save (Save isotropic volume... stopped, niiv reconstruct interrupted)
    # leaves OUT.partial; a File > Save of any layer to OUT removed it without a word
    out = tmp_path / "iso.ome.zarr"
    partial = unfinished_save(out)
    kept = sorted(p.relative_to(partial) for p in partial.rglob("*"))
    assert kept
    layer = make_napari_viewer().add_image(volume())
    with pytest.raises(WriterRefused, match=r"iso\.ome\.zarr\.partial beside it holds an unfinished save"):
        layer.save(str(out), plugin=PLUGIN)
    assert sorted(p.relative_to(partial) for p in partial.rglob("*")) == kept and not out.exists()


def test_an_imagej_image_shown_as_channels_is_not_a_z_stack(tmp_path: Path) -> None:
    # an ImageJ 2D image with 3 channels in composite (or color) mode, as Fiji saves a multichannel
    # image, was taken for a z-stack of 3 sections; in grayscale mode (tifffile's default for any 3D
    # array written without axes) it stays one
    data = volume((3, 16, 20))
    write_tif(tmp_path / "composite.tif", data, imagej=True, metadata={"mode": "composite"})
    write_tif(tmp_path / "grey.tif", data, imagej=True, metadata={"mode": "grayscale"})
    assert get_reader(str(tmp_path / "composite.tif")) is None
    with pytest.raises(NiivInputError, match="holds 3 channels"):
        open_volume(tmp_path / "composite.tif")
    assert open_volume(tmp_path / "grey.tif").shape == (3, 16, 20)


@pytest.mark.slow  # a napari viewer
def test_a_zipped_ome_zarr_opens_with_its_placement(make_napari_viewer, tmp_path: Path) -> None:
    # a store zipped to be sent as one file (zarr's ZipStore layout: the store's contents at the top
    # of the zip) was claimed by its .zarr name and failed as "could not read it ... may be damaged"
    import shutil

    viewer = make_napari_viewer()
    data = volume()
    layer = viewer.add_image(data, scale=(2.0, 0.5, 0.5), translate=(1.0, 0.0, 3.0), units=("um",) * 3)
    layer.save(str(tmp_path / "store.ome.zarr"), plugin=PLUGIN)
    archive = shutil.make_archive(str(tmp_path / "zipped"), "zip", root_dir=tmp_path / "store.ome.zarr")
    zipped = Path(archive).rename(tmp_path / "zipped.ome.zarr")
    [opened] = viewer.open(str(zipped), plugin=PLUGIN)
    np.testing.assert_array_equal(np.asarray(opened.data), data)
    assert tuple(opened.scale) == (2.0, 0.5, 0.5) and tuple(opened.translate) == (1.0, 0.0, 3.0)
    assert str(opened.units[0]) == "micrometer" and opened.name == "zipped"
    (tmp_path / "notes.zarr").write_text("not a store")
    with pytest.raises(NiivInputError, match=r"notes\.zarr: a file, not a zarr store"):
        viewer.open(str(tmp_path / "notes.zarr"), plugin=PLUGIN)


@pytest.mark.slow  # a napari viewer
def test_an_unfinished_save_opened_by_hand_says_so(make_napari_viewer, tmp_path: Path) -> None:
    # OUT.partial (no multiscales yet) was declined as "a zarr group without OME-Zarr multiscales
    # metadata; open one of its arrays instead (0)", and OUT.partial/0 then opened with the chunks
    # not yet written shown as zeros, as if they were data
    partial = unfinished_save(tmp_path / "iso.ome.zarr")
    with pytest.raises(NiivInputError, match="an unfinished save by napari-niiv"):
        open_volume(partial / "0")
    with pytest.raises(NiivInputError, match=r"iso\.ome\.zarr\.partial: an unfinished save"):
        make_napari_viewer().open(str(partial), plugin=PLUGIN)
