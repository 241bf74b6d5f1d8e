"""`niiv reconstruct --confidence MAP`: the confidence map written beside the output, with its voxels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_niiv.data import open_volume
from napari_niiv.data.degrade import pool_axis
from napari_niiv.inference.geometry import output_geometry
from tests.conftest import write_tif

ALPHA = 4.0


@pytest.fixture(scope="module")
def volume(medulla) -> np.ndarray:
    """Real FIB-SEM pooled by 4 along z: (10, 40, 44) uint8."""
    return pool_axis(medulla[:40, :40, :44].astype(np.float32), ALPHA, 0).astype(np.uint8)


@pytest.mark.slow
def test_cli_writes_the_map_beside_the_output(tmp_path, capsys, volume, tiny_user_weights):
    from napari_niiv.cli import main

    src = tmp_path / "aniso.tif"
    write_tif(src, volume, imagej=True, resolution=(1.0, 1.0), metadata={"spacing": ALPHA, "unit": "um"})
    out, cmap = tmp_path / "iso.tif", tmp_path / "iso-confidence.tif"
    weights = tiny_user_weights / "tiny.safetensors"
    argv = [str(src), str(out), "--weights", str(weights), "--precision", "fp32", "--confidence", str(cmap)]
    assert main(["reconstruct", *argv]) == 0, capsys.readouterr().err
    iso, umap = open_volume(out), open_volume(cmap)
    assert umap.shape == iso.shape == output_geometry(volume.shape, ALPHA).shape
    np.testing.assert_allclose(umap.voxel_size, iso.voxel_size)
    data = np.asarray(umap.data)
    assert data.dtype == np.float32 and np.all(np.isfinite(data)) and data.max() > 0
    # refused: a format niiv does not write, and an existing map without --overwrite
    bad = [str(src), str(tmp_path / "b.tif"), "--weights", str(weights), "--confidence", str(tmp_path / "m.h5")]
    assert main(["reconstruct", *bad]) != 0
    assert "--confidence" in capsys.readouterr().err
    again = [str(src), str(tmp_path / "c.tif"), "--weights", str(weights), "--confidence", str(cmap)]
    assert main(["reconstruct", *again]) != 0 and not (tmp_path / "c.tif").exists()


@pytest.mark.slow
def test_a_map_cut_short_is_written_by_the_same_command_without_redoing_the_store(
    tmp_path, capsys, volume, tiny_user_weights, monkeypatch
):
    """Ctrl-C while the map is written, after OUT.zarr was published: the same command again
    writes only the map (OUT is checked to be this very reconstruction, by its recorded input,
    settings and weights, and left untouched); another reconstruction at OUT is refused."""
    from napari_niiv import cli

    src = tmp_path / "aniso.tif"
    write_tif(src, volume, imagej=True, resolution=(1.0, 1.0), metadata={"spacing": ALPHA, "unit": "um"})
    out, cmap = tmp_path / "iso.ome.zarr", tmp_path / "iso-confidence.tif"
    weights = tiny_user_weights / "tiny.safetensors"
    argv = ["reconstruct", str(src), str(out), "--weights", str(weights), "--precision", "fp32", "--levels", "1"]
    write_array = cli._write_array

    def interrupted(path, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_write_array", interrupted)
    capsys.readouterr()
    assert cli.main([*argv, "--confidence", str(cmap)]) == 130
    assert out.exists() and not cmap.exists()
    said = capsys.readouterr().err  # it said only "interrupted" (the evaluate audit)
    assert f"{out} is complete, the confidence map is not: run the same command again to write only the map" in said
    monkeypatch.setattr(cli, "_write_array", write_array)
    published = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert cli.main([*argv, "--confidence", str(cmap)]) == 0
    assert "writing only the confidence map" in capsys.readouterr().err
    assert cmap.exists() and {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == published
    other = tmp_path / "other-confidence.tif"
    assert cli.main([*argv, "--alpha", "5", "--confidence", str(other)]) == 2  # not the same reconstruction
    assert "already exists" in capsys.readouterr().err and not other.exists()


@pytest.mark.slow
def test_a_map_cut_short_beside_a_tif_says_how_to_get_it(tmp_path, capsys, volume, tiny_user_weights, monkeypatch):
    """A .tif OUT cannot be recognised as this reconstruction, so the map alone cannot be resumed:
    the interruption says OUT is complete and what writing the map then takes."""
    from napari_niiv import cli

    src = tmp_path / "aniso.tif"
    write_tif(src, volume, imagej=True, resolution=(1.0, 1.0), metadata={"spacing": ALPHA, "unit": "um"})
    out, cmap = tmp_path / "iso.tif", tmp_path / "iso-confidence.tif"
    argv = ["reconstruct", str(src), str(out), "--weights", str(tiny_user_weights / "tiny.safetensors")]
    write_array = cli._write_array

    def interrupted_map(path, *args):
        if path == cmap:
            raise KeyboardInterrupt
        return write_array(path, *args)

    monkeypatch.setattr(cli, "_write_array", interrupted_map)
    assert cli.main([*argv, "--confidence", str(cmap)]) == 130
    said = capsys.readouterr().err
    assert out.exists() and not cmap.exists()
    assert f"{out} is complete, the confidence map is not: to write it, run again with --overwrite" in said


def test_a_folder_niiv_did_not_write_is_refused_as_out_before_any_work(tmp_path, capsys, volume, tiny_user_weights):
    """With --confidence, an existing .zarr OUT may be this reconstruction, finished by a run
    stopped during its map; a folder napari-niiv did not write cannot be, and was refused only
    after the volume and weights were loaded and the plan printed."""
    from napari_niiv.cli import main

    src = tmp_path / "aniso.tif"
    write_tif(src, volume, imagej=True, resolution=(1.0, 1.0), metadata={"spacing": ALPHA, "unit": "um"})
    out = tmp_path / "mine.ome.zarr"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    weights = tiny_user_weights / "tiny.safetensors"
    argv = ["reconstruct", str(src), str(out), "--weights", str(weights), "--confidence", str(tmp_path / "m.tif")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{out} already exists" in err and "->" not in err  # no plan: refused before the work
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and not (tmp_path / "m.tif").exists()
