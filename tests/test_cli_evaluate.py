"""`niiv evaluate` and the dtype/confidence outputs of `niiv reconstruct`: the cli-evaluate audit's cases."""

import numpy as np
import pytest

from napari_niiv.cli import main
from napari_niiv.data import open_volume
from napari_niiv.inference.weights import save_weights

from .conftest import TINY, random_model


@pytest.fixture
def tiny(tmp_path):
    return save_weights(tmp_path / "tiny.safetensors", random_model(TINY), 4.0, None, card={"architecture": "v2"})


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("dtype", ["int8", "int32", "uint32", "int64", "uint64"])
def test_integers_a_tif_cannot_hold_come_out_as_float32(tmp_path, capsys, tiny, dtype) -> None:
    """ImageJ TIFF holds uint8, uint16, int16 and float32: other integers crashed in tifffile after
    the whole reconstruction; they are written as float32 there, and kept in .npy."""
    src = tmp_path / "in.npy"
    np.save(src, (np.random.default_rng(0).random((4, 12, 12)) * 100).astype(dtype))
    code, _, err = _run(capsys, "reconstruct", src, tmp_path / "o.tif", "--alpha", "2", "--weights", tiny)
    assert code == 0, err
    assert open_volume(tmp_path / "o.tif").data.dtype == np.float32
    code, _, err = _run(capsys, "reconstruct", src, tmp_path / "o.npy", "--alpha", "2", "--weights", tiny)
    assert code == 0, err
    assert np.load(tmp_path / "o.npy").dtype == np.dtype(dtype)
