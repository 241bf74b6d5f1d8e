"""Audit 12, the confidence map as a user meets it: `niiv reconstruct --confidence` with OUT inside
the map's path, and the live view's map after a setting changes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_niiv.data.degrade import pool_axis
from tests.conftest import write_tif

ALPHA = 4.0


@pytest.fixture(scope="module")
def volume(medulla) -> np.ndarray:
    """Real FIB-SEM pooled by 4 along z: (4, 24, 24) uint8."""
    return pool_axis(medulla[:16, :24, :24].astype(np.float32), ALPHA, 0).astype(np.uint8)


@pytest.mark.parametrize(("out_name", "map_name"), [("maps.zarr/iso.tif", "maps.zarr"), ("m.tif/iso.zarr", "m.tif")])
def test_a_map_path_that_holds_out_is_refused_before_any_work(
    tmp_path, capsys, volume, tiny_user_weights, out_name, map_name
):
    """`niiv reconstruct IN maps.zarr/iso.tif --confidence maps.zarr` wrote OUT (making the folder
    maps.zarr), then refused the map after the whole reconstruction: 'maps.zarr already exists'.
    Refused first now, with nothing written."""
    from napari_niiv.cli import main

    src = tmp_path / "aniso.tif"
    write_tif(src, volume, imagej=True, resolution=(1.0, 1.0), metadata={"spacing": ALPHA, "unit": "um"})
    out, cmap = tmp_path / out_name, tmp_path / map_name
    weights = tiny_user_weights / "tiny.safetensors"
    argv = ["reconstruct", str(src), str(out), "--weights", str(weights), "--confidence", str(cmap)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--confidence {cmap}: OUT {out} lies inside it" in err and "->" not in err  # before the plan
    assert "Traceback" not in err
    assert not cmap.exists() and not out.exists()


def test_a_refused_map_path_is_named_as_the_map_not_as_the_output(tmp_path, capsys, volume, tiny_user_weights):
    """`--confidence IN` said 'IN: the output is the input IN', and an existing map 'm.tif already
    exists': which output, the user had to guess. The words now start with --confidence."""
    from napari_niiv.cli import main

    src = tmp_path / "aniso.tif"
    write_tif(src, volume, imagej=True, resolution=(1.0, 1.0), metadata={"spacing": ALPHA, "unit": "um"})
    weights = tiny_user_weights / "tiny.safetensors"
    existing = tmp_path / "m.tif"
    existing.write_bytes(b"the user's")
    under_file = tmp_path / "notes.txt" / "m.tif"
    under_file.parent.write_text("a file")
    cases = [
        (src, f"--confidence {src}: the output is the input"),
        (existing, f"--confidence {existing} already exists; choose another output path or pass --overwrite"),
        (under_file, f"--confidence {under_file}: cannot write {under_file}: {under_file.parent} is a file"),
    ]
    for cmap, words in cases:
        out = tmp_path / "iso.tif"
        argv = ["reconstruct", str(src), str(out), "--weights", str(weights), "--confidence", str(cmap)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
        assert not out.exists()
    assert existing.read_bytes() == b"the user's" and src.exists()
