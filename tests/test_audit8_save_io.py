"""The save / 3D / IO audit (round 8): what napari's Open, the plugin's writer and the background
save do with damaged files, odd paths and interrupted stores."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_niiv._napari.reader import get_reader
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.store import ArrayBlocks, Layout
from napari_niiv.inference.store import write_ome_zarr as write_store

from .conftest import write_tif


def _volume() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4000, (8, 16, 20)).astype(np.uint16)


def _store(path: Path, levels: int | None = None) -> Path:
    layout = Layout((8, 16, 20), np.uint16, (4, 8, 8), (40.0, 4.0, 4.0), "nanometer", levels=levels)
    return write_store(path, layout, ArrayBlocks(_volume())).path


def _reason(path: Path) -> str:
    """What opening ``path`` with the plugin tells the user (it must be claimed, then fail saying why)."""
    read = get_reader(str(path))
    assert read is not None, f"{path.name}: refused without a reason (napari says only 'refused the file')"
    with pytest.raises(NiivInputError) as info:
        read(str(path))
    return str(info.value)


def test_a_damaged_store_or_tiff_is_claimed_and_says_why(tmp_path: Path) -> None:
    """A store with a level missing or garbled metadata, a .tif that is not a TIFF: niiv's reader
    refused them silently, napari said only "Reader 'napari-niiv' ... refused the file" and the
    other readers failed on them too or opened them without their geometry."""
    missing = _store(tmp_path / "missing.ome.zarr", levels=2)
    shutil.rmtree(missing / "1")
    assert "could not read it as a volume" in _reason(missing)
    garbled = _store(tmp_path / "garbled.ome.zarr")
    (garbled / "zarr.json").write_text("{not json")
    assert "damaged" in _reason(garbled)
    (tmp_path / "empty.tif").write_bytes(b"")
    assert "not a TIFF file" in _reason(tmp_path / "empty.tif")
    (tmp_path / "noise.tif").write_bytes(np.random.default_rng(1).bytes(1000))
    assert "damaged" in _reason(tmp_path / "noise.tif")
    # what niiv does not reconstruct is still left to napari's other readers
    write_tif(tmp_path / "plane.tif", _volume()[0])
    assert get_reader(str(tmp_path / "plane.tif")) is None
    assert get_reader(str(tmp_path / "missing.tif")) is None
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert get_reader(str(tmp_path / "notes")) is None


def test_a_refused_resume_names_each_difference_once_in_the_users_words(tmp_path: Path) -> None:
    """The dock's save of a partial store made with another alpha said "(other alpha, scale, ...,
    another shape)": the store's shape follows from the alpha, and a layout field the fingerprint
    holds too (the pixel type) was named twice, once by its field name ("another dtype")."""
    from napari_niiv.inference.store import WriteCancelled

    out = tmp_path / "out.ome.zarr"

    def write(shape: tuple[int, int, int], dtype: str, settings: dict) -> None:
        layout = Layout(shape, dtype, (4, 8, 8), (4.0, 4.0, 4.0))
        record = {"settings": settings, "output_shape": list(shape), "dtype": np.dtype(dtype).str}
        blocks = ArrayBlocks(np.zeros(shape, dtype))
        write_store(out, layout, blocks, fingerprint=record, resume=True, cancelled=lambda: True)

    with pytest.raises(WriteCancelled):
        write((80, 16, 16), "u1", {"alpha": 10})
    with pytest.raises(NiivInputError, match=r"differs from this one \(([^)]|\([^)]*\))*\)") as info:
        write((64, 16, 16), "u1", {"alpha": 8})
    why = str(info.value).split("differs from this one (", 1)[1].split("): its chunks", 1)[0]
    assert why == "other alpha, scale, orientation, device, precision or sections (degradation)"
    with pytest.raises(NiivInputError) as info:
        write((80, 16, 16), "<u2", {"alpha": 10})
    why = str(info.value).split("differs from this one (", 1)[1].split("): its chunks", 1)[0]
    assert why == "another pixel type"


@pytest.mark.parametrize("path", ["", "/", "..", "some/folder/.."])
def test_a_save_path_that_names_no_store_is_refused_with_what_to_do(path: str) -> None:
    """The dock's save of such a path (a script's save_to, a typed path) raised pathlib's
    "PosixPath('.') has an empty name" ValueError instead of saying what to give."""
    from napari_niiv._napari.save_job import as_store_path

    with pytest.raises(NiivInputError, match="names no store; give a file name"):
        as_store_path(path)
    assert as_store_path("a/b") == Path("a/b.ome.zarr") and as_store_path("c.zarr") == Path("c.zarr")
