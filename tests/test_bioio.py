"""CZI, ND2 and LIF files open through bioio (the ``bioio`` extra). No CZI/ND2/LIF writer exists in
Python, so bioio's own OME-TIFF reader (bioio-ome-tiff) stands in for the reading path, on a file
written here with tifffile; the dispatch and the message without the extra are checked on a .czi."""

from __future__ import annotations

import sys

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_niiv.data.io import BIOIO_SUFFIXES, SourceError, open_bioio, open_volume
from napari_niiv.errors import NiivInputError

# bioio-ome-tiff passes an argument its ome-types no longer takes; nothing for us to act on.
pytestmark = pytest.mark.filterwarnings("ignore:As of version 0.4.0, the parser argument:DeprecationWarning")


def _ome_tiff(path, data, sizes_um=None, axes="ZYX"):
    metadata = {"axes": axes}
    if sizes_um is not None:
        z, y, x = sizes_um
        metadata.update(
            PhysicalSizeZ=z,
            PhysicalSizeY=y,
            PhysicalSizeX=x,
            PhysicalSizeZUnit="µm",
            PhysicalSizeYUnit="µm",
            PhysicalSizeXUnit="µm",
        )
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    return path


@pytest.fixture
def bioio_ome_tiff():
    pytest.importorskip("bioio", reason="bioio is an optional extra (the bioio extra)")
    pytest.importorskip("bioio_ome_tiff", reason="bioio's OME-TIFF reader plugin (bioio-ome-tiff) is not installed")


def test_bioio_reads_data_lazily_with_voxel_sizes_in_micrometres(tmp_path, bioio_ome_tiff) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 65535, size=(5, 24, 32), dtype=np.uint16)
    path = _ome_tiff(tmp_path / "stack.ome.tif", data, sizes_um=(2.0, 0.25, 0.2))
    vol = open_bioio(path)
    assert isinstance(vol.data, da.Array)
    assert vol.shape == (5, 24, 32)
    assert vol.data.dtype == np.uint16
    np.testing.assert_array_equal(vol.data.compute(), data)
    assert vol.voxel_size == pytest.approx((2.0, 0.25, 0.2))
    assert vol.unit == "micrometer"
    assert vol.alpha == pytest.approx(10.0)
    assert vol.name == "stack"
    assert vol.has_voxel_size


def test_bioio_without_physical_sizes_leaves_them_unknown(tmp_path, bioio_ome_tiff) -> None:
    data = np.arange(4 * 16 * 16, dtype=np.uint8).reshape(4, 16, 16)
    vol = open_bioio(_ome_tiff(tmp_path / "plain.ome.tif", data))
    np.testing.assert_array_equal(vol.data.compute(), data)
    assert not vol.has_voxel_size
    assert vol.voxel_size == (1.0, 1.0, 1.0)


def test_bioio_refuses_several_channels_naming_them(tmp_path, bioio_ome_tiff) -> None:
    data = np.zeros((3, 4, 16, 16), dtype=np.uint8)
    path = _ome_tiff(tmp_path / "channels.ome.tif", data, sizes_um=(1.0, 0.1, 0.1), axes="CZYX")
    with pytest.raises(NiivInputError, match="3 channels"):
        open_bioio(path)


@pytest.mark.parametrize("suffix", BIOIO_SUFFIXES)
def test_microscope_formats_go_to_bioio_and_name_the_extra_without_it(tmp_path, monkeypatch, suffix) -> None:
    path = tmp_path / f"scan{suffix}"
    path.write_bytes(b"not really a microscope file")
    monkeypatch.setitem(sys.modules, "bioio", None)  # as if the extra were not installed: import fails
    needs = rf"reading \{suffix} files needs bioio and its readers: pip install bioio bioio-ome-tiff bioio-czi"
    # SourceError: napari's reader shows it rather than pass the file on to another reader.
    with pytest.raises(SourceError, match=needs) as err:
        open_volume(path)
    assert str(path) in str(err.value)


def test_unknown_format_mentions_the_bioio_extra(tmp_path) -> None:
    path = tmp_path / "scan.xyz"
    path.write_bytes(b"?")
    with pytest.raises(NiivInputError, match=r"\.czi/\.nd2/\.lif with the bioio extra"):
        open_volume(path)


@pytest.mark.parametrize(("suffix", "plugin"), [(".czi", "bioio_czi"), (".nd2", "bioio_nd2"), (".lif", "bioio_lif")])
def test_bioio_without_the_formats_reader_names_the_extra(tmp_path, suffix, plugin) -> None:
    pytest.importorskip("bioio", reason="bioio is an optional extra (the bioio extra)")
    try:
        __import__(plugin)
    except ImportError:
        pass
    else:
        pytest.skip(f"{plugin} is installed: bioio would read the file itself")
    path = tmp_path / f"scan{suffix}"
    path.write_bytes(b"not really a microscope file")
    with pytest.raises(SourceError, match=rf"no bioio reader for \{suffix} files is installed: pip install bioio "):
        open_volume(path)
