"""`niiv evaluate`'s numbers and refusals, and the OME-Zarr the napari writer saves read back by other
readers: the eval-interop audit (audit 11)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from napari_niiv.cli import main
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.weights import save_weights
from napari_niiv.training import evaluate as evaluate_module
from napari_niiv.training.evaluate import evaluate, interpolation

from .conftest import TINY, random_model, write_tif


@pytest.fixture
def tiny(tmp_path):
    return save_weights(tmp_path / "tiny.safetensors", random_model(TINY), 4.0, None, card={"architecture": "v2"})


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _table(out: str) -> dict[str, tuple[float, float, float]]:
    """method -> (CF-PSNR, PSNR, SSIM) of the printed table."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 4 and re.fullmatch(r"-?\d+\.\d+", cells[1]):
            rows[cells[0]] = (float(cells[1]), float(cells[2]), float(cells[3]))
    return rows


def test_a_blank_block_is_left_out_not_the_whole_evaluation(tmp_path, capsys, medulla, tiny) -> None:
    """A volume with a black border cut into cubes: the one blank cube made the whole evaluation fail
    ('all 32 slices to score are constant'), after the work, naming neither the volume nor a way out.
    It is left out, and said; a volume that is blank throughout is refused by name."""
    vol = medulla[:32, :64, :32].copy()
    vol[:, 32:] = 0
    path = tmp_path / "border.tif"
    write_tif(path, vol)
    code, out, err = _run(capsys, "evaluate", path, "--alpha", "4", "--cube", "32", "--weights", tiny)
    assert code == 0, err
    assert "1 of 2 block(s) of 32x32x32 are blank" in err
    alone = tmp_path / "alone.tif"
    write_tif(alone, vol[:, :32])
    code, out_alone, err = _run(capsys, "evaluate", alone, "--alpha", "4", "--cube", "32", "--weights", tiny)
    assert code == 0, err
    assert _table(out) == _table(out_alone)  # the blank block changes nothing
    blank = tmp_path / "blank.tif"
    write_tif(blank, np.zeros((32, 32, 32), np.uint8))
    code, out, err = _run(capsys, "evaluate", path, blank, "--alpha", "4", "--cube", "32", "--weights", tiny)
    assert code == 2 and not out
    assert err.splitlines()[-1].startswith(f"niiv evaluate: error: {blank}: the volume is constant (blank)")
    assert "leave it out" in err and "Traceback" not in err

    # the Python API leaves it out too
    methods = {"bicubic": interpolation("bicubic")}
    real = medulla[:32, :32, :32]
    both = evaluate([real, np.zeros_like(real)], 4.0, methods)
    assert both[0].cf_psnr == pytest.approx(evaluate([real], 4.0, methods)[0].cf_psnr)
    with pytest.raises(NiivInputError, match=r"every xz slice of the 1 volume\(s\) to score is constant \(blank\)"):
        evaluate([np.zeros_like(real)], 4.0, methods, ranges=[(0, 255)])


def test_a_refusal_names_the_volume_among_several(tmp_path, capsys, medulla, tiny) -> None:
    """With several volumes a 2D file or a NaN volume was refused without saying which one."""
    good = tmp_path / "good.tif"
    write_tif(good, medulla[:32, :32, :32])
    flat = tmp_path / "flat.tif"
    write_tif(flat, medulla[0])
    code, out, err = _run(capsys, "evaluate", good, flat, "--alpha", "4", "--cube", "32", "--weights", tiny)
    assert code == 2 and not out and err.startswith(f"niiv evaluate: error: {flat}: ")
    nan = tmp_path / "nan.tif"
    data = medulla[:32, :32, :32].astype(np.float32)
    data[0, 0, 0] = np.nan
    write_tif(nan, data)
    code, out, err = _run(capsys, "evaluate", good, nan, "--alpha", "4", "--cube", "32", "--weights", tiny)
    assert code == 2 and not out and err.startswith(f"niiv evaluate: error: {nan}: ")


def test_json_rows_say_what_they_measure_and_match_the_table(tmp_path, capsys, medulla, tiny) -> None:
    """--json held the scores without what they measure: a CF-PSNR at --cutoff 10 or on --slices xy
    read the same as the default's. Each row now carries slices, cutoff, cube, region, volumes and
    blocks; its numbers are the table's."""
    path = tmp_path / "iso.tif"
    write_tif(path, medulla[:40, :40, :40])
    report = tmp_path / "s.json"
    args = ["--alpha", "4", "--cube", "32", "--weights", tiny, "--cutoff", "10", "--slices", "yz"]
    code, out, err = _run(capsys, "evaluate", path, *args, "--region", "0:40,0:40,0:36", "--json", report)
    assert code == 0, err
    rows = json.loads(report.read_text())
    table = _table(out)
    assert [r["method"] for r in rows] == list(table) and "bicubic" in table
    for r in rows:
        assert (r["slices"], r["cutoff"], r["cube"], r["region"]) == ("yz", 10.0, 32, "0:40,0:40,0:36")
        assert r["volumes"] == [str(path.resolve())] and r["blocks"] == 8
        assert table[r["method"]] == (round(r["cf_psnr"], 2), round(r["psnr"], 2), round(r["ssim"], 3))


def test_a_json_file_that_appeared_while_scoring_is_kept(tmp_path, capsys, medulla, tiny, monkeypatch) -> None:
    """The --json file was checked for before the scoring only: one another run wrote meanwhile was
    replaced without --overwrite. It is kept, and the run says so in one line."""
    path = tmp_path / "iso.tif"
    write_tif(path, medulla[:32, :32, :32])
    report = tmp_path / "s.json"
    scoring = evaluate_module.evaluate

    def other_run_writes(*args, **kwargs):
        report.write_text("the other run's scores")
        return scoring(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", other_run_writes)
    code, out, err = _run(capsys, "evaluate", path, "--alpha", "4", "--cube", "32", "--weights", tiny, "--json", report)
    assert code == 2 and "bicubic" in out
    last = err.splitlines()[-1]
    assert last.startswith(f"niiv evaluate: error: {report} appeared while scoring") and "--overwrite" in last
    assert "Traceback" not in err
    assert report.read_text() == "the other run's scores"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".s.json")] == []  # no temporary left
    report.unlink()
    code, out, err = _run(
        capsys, "evaluate", path, "--alpha", "4", "--cube", "32", "--weights", tiny, "--json", report, "--overwrite"
    )
    assert code == 0, err
    assert json.loads(report.read_text())[0]["method"] == "nearest"


def test_evaluate_says_when_weights_are_scored_on_sections_they_never_learned(tmp_path, capsys, medulla, tiny) -> None:
    """niiv reconstruct warns when weights are used on sections they never learned (niiv-em on psf,
    niiv-lm on thick); niiv evaluate scored them silently, and the table read as the weights' merit."""
    path = tmp_path / "iso.tif"
    write_tif(path, medulla[:32, :32, :32])
    code, _, err = _run(capsys, "evaluate", path, "--alpha", "4", "--cube", "32", "--weights", tiny)
    assert code == 0 and "never" not in err
    code, _, err = _run(
        capsys, "evaluate", path, "--alpha", "4", "--cube", "32", "--weights", tiny, "--degradation", "psf"
    )
    assert code == 0, err
    assert "note: tiny learned thick sections, never psf ones" in err


def test_xy_blocks_are_reported_in_z_y_x(tmp_path, capsys, medulla, tiny) -> None:
    """--slices xy said '1 block(s) of 32x20x32' for a 20x32x32 (z, y, x) volume: the blocks' shape was
    printed in the transposed order they are scored in."""
    path = tmp_path / "lm.tif"
    write_tif(path, medulla[:20, :32, :32])
    code, _, err = _run(capsys, "evaluate", path, "--alpha", "4", "--cube", "32", "--weights", tiny, "--slices", "xy")
    assert code == 0, err
    assert "1 block(s) of 20x32x32 (z, y, x), alpha 4" in err


def test_napari_writer_pyramid_reads_back_in_place_in_every_reader(make_napari_viewer, tmp_path: Path) -> None:
    """File > Save Selected Layers (OME-Zarr (niiv)) of an anisotropic, translated layer in micrometres:
    valid NGFF 0.5; ome-zarr-py and zarr read every level where its voxels are (level L averages 2**L
    voxels: its first centre (2**L - 1) / 2 voxels in); niiv's reader re-opens it where it was."""
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from napari_niiv._napari.reader import get_reader
    from napari_niiv.inference.store import validate_store

    viewer = make_napari_viewer()
    data = (np.random.default_rng(0).random((6, 300, 290)) * 60000).astype(np.uint16)
    scale, translate = (0.3, 0.1, 0.1), (5.0, -2.0, 1.5)
    layer = viewer.add_image(data, scale=scale, translate=translate, units=("um",) * 3, contrast_limits=(100, 50000))
    out = tmp_path / "saved.ome.zarr"
    assert viewer.layers.save(str(out), selected=True, plugin="napari-niiv") == [str(out)]
    validate_store(out)
    group = zarr.open_group(str(out), mode="r")
    assert group.metadata.zarr_format == 3 and group.attrs["ome"]["version"] == "0.5"
    assert [a["name"] for a in group.attrs["ome"]["multiscales"][0]["axes"]] == ["z", "y", "x"]
    node = next(iter(Reader(parse_url(str(out)))()))
    assert len(node.data) == 2 and node.data[0].dtype == np.uint16
    assert node.metadata["contrast_limits"] == [[100.0, 50000.0]]
    assert [a.get("unit") for a in node.metadata["axes"]] == ["micrometer"] * 3
    for level, (arr, transforms) in enumerate(zip(node.data, node.metadata["coordinateTransformations"], strict=True)):
        f = 2**level
        assert tuple(arr.shape) == tuple(-(-n // f) for n in data.shape)
        assert tuple(group[str(level)].metadata.dimension_names) == ("z", "y", "x")
        got = {t["type"]: t.get(t["type"]) for t in transforms}
        assert got["scale"] == pytest.approx([s * f for s in scale])
        want = [t + s * (f - 1) / 2 for t, s in zip(translate, scale, strict=True)]
        assert got["translation"] == pytest.approx(want)
    np.testing.assert_array_equal(np.asarray(node.data[0]), data)
    levels, meta, _ = get_reader(str(out))(str(out))[0]
    assert meta["scale"] == pytest.approx(tuple(layer.scale)) and meta["translate"] == pytest.approx(translate)
    assert meta["units"] == ("micrometer",) * 3 and meta["contrast_limits"] == [100.0, 50000.0]
    assert meta["multiscale"] and len(levels) == 2


def test_both_rows_name_the_slices_they_add(tmp_path, capsys, medulla, tiny) -> None:
    """--slices yz --both marked the xz + yz row '+yz', as if yz were added to the yz rows: it adds xz."""
    path = tmp_path / "iso.tif"
    write_tif(path, medulla[:32, :40, :40])
    args = ["--alpha", "4", "--cube", "32", "--weights", tiny, "--both"]
    code, out, err = _run(capsys, "evaluate", path, *args, "--slices", "yz")
    assert code == 0, err
    assert list(_table(out)) == ["nearest", "bilinear", "bicubic", "tiny", "tiny +xz"]
    code, out, err = _run(capsys, "evaluate", path, *args)
    assert code == 0, err
    assert list(_table(out)) == ["nearest", "bilinear", "bicubic", "tiny", "tiny +yz"]


def test_a_volume_given_twice_is_refused(tmp_path, capsys, medulla, tiny, monkeypatch) -> None:
    """`niiv evaluate A A` (or A and ./A) scored A's blocks twice, weighting it double in every mean, silently;
    a weights file given twice is refused, and so is a volume now."""
    path = tmp_path / "iso.tif"
    write_tif(path, medulla[:32, :32, :32])
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, "evaluate", path, "iso.tif", "--alpha", "4", "--cube", "32", "--weights", tiny)
    assert code == 2 and not out
    assert err == "niiv evaluate: error: iso.tif is given twice (as " + str(path) + " too); give each volume once\n"


def test_an_empty_volume_or_weights_name_is_refused_as_empty(tmp_path, capsys, medulla, tiny) -> None:
    """`--weights ''` (an unset shell variable) was read as the current folder: '/work/main is a folder;
    give one weights file in it'; an empty volume as '.: a folder, but not a zarr store'."""
    path = tmp_path / "iso.tif"
    write_tif(path, medulla[:32, :32, :32])
    code, out, err = _run(capsys, "evaluate", path, "--alpha", "4", "--cube", "32", "--weights", "")
    assert code == 2 and not out and "--weights was given an empty value" in err
    code, out, err = _run(capsys, "evaluate", path, "", "--alpha", "4", "--cube", "32", "--weights", tiny)
    assert code == 2 and not out and "a volume was given as an empty name" in err


def test_blocks_constant_on_the_planes_scored_are_counted_out_in_the_note_and_the_json(
    tmp_path, capsys, medulla, tiny
) -> None:
    """The command line left out blocks constant throughout, evaluate() those constant on the planes
    the sections cover at each alpha: a block with structure only past the last section was scored by
    neither, yet counted in '2 block(s)' and in the JSON's blocks (review 11)."""
    good, edge = tmp_path / "good.tif", tmp_path / "edge.tif"
    write_tif(good, medulla[:30, :30, :30])
    flat = np.full((30, 30, 30), 90, np.uint8)
    flat[28:] = medulla[28:30, :30, :30]  # at alpha 4, 7 sections cover planes 0-27 only
    write_tif(edge, flat)
    out = tmp_path / "scores.json"
    args = ("--alpha", "4", "--cube", "30", "--weights", tiny)
    code, _, err = _run(capsys, "evaluate", good, edge, *args, "--json", out)
    assert code == 0, err
    assert "1 of 2 block(s) are constant on every plane scored at alpha 4 and left out: 1 scored" in err
    rows = json.loads(out.read_text())
    assert {r["blocks"] for r in rows} == {1}
    alone = tmp_path / "alone.json"
    assert _run(capsys, "evaluate", good, *args, "--json", alone)[0] == 0
    for a, b in zip(rows, json.loads(alone.read_text()), strict=True):
        assert a["cf_psnr"] == pytest.approx(b["cf_psnr"]) and a["method"] == b["method"]
