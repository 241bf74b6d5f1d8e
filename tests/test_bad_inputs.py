"""Every class of bad input, table-driven, on real small files through the CLI and the Python
entry points: exit code 2 and one line (or a NiivInputError), no traceback, the inputs
byte-identical afterwards, and nothing half-written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_niiv.cli import main
from napari_niiv.data.io import open_volume
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.reconstructor import reconstruct_volume
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.inference.weights import load_weights, save_weights
from tests.conftest import random_model, write_tif


def _files(tmp: Path, medulla: np.ndarray) -> dict[str, Path]:
    """The inputs every case may use, written once per test."""
    vol = medulla[:16, :32, :32].reshape(4, 4, 32, 32).mean(axis=1).astype(np.uint8)
    f = {"ok": tmp / "ok.tif", "weights": tmp / "w.safetensors"}
    write_tif(f["ok"], vol, imagej=True, resolution=(1 / 4, 1 / 4), metadata={"spacing": 16, "axes": "ZYX"})
    save_weights(f["weights"], random_model(), 4.0, None)
    write_tif(tmp / "empty.tif", np.zeros((0, 32, 32), np.uint8))
    f["empty"] = tmp / "empty.tif"
    np.save(tmp / "empty.npy", np.zeros((4, 0, 32), np.float32))
    f["empty_npy"] = tmp / "empty.npy"
    whole = f["ok"].read_bytes()
    (tmp / "trunc.tif").write_bytes(whole[: len(whole) // 2])
    f["trunc"] = tmp / "trunc.tif"
    for name, spacing in (("zero_voxel", 0.0), ("negative_voxel", -16.0), ("nan_voxel", float("nan")), ("thin_z", 2)):
        write_tif(tmp / f"{name}.tif", vol, imagej=True, resolution=(1 / 4, 1 / 4), metadata={"spacing": spacing})
        f[name] = tmp / f"{name}.tif"
    write_tif(tmp / "iso.tif", medulla[:32, :32, :32])
    f["iso"] = tmp / "iso.tif"
    write_tif(tmp / "flat.tif", vol[0])
    f["flat"] = tmp / "flat.tif"
    with tifffile.TiffWriter(tmp / "nan.tif") as w:
        bad = vol.astype(np.float32)
        bad[1, 3, 3] = np.nan
        w.write(bad, photometric="minisblack")
    f["nan"] = tmp / "nan.tif"
    np.save(tmp / "huge.npy", vol.astype(np.float64) * 1e300)  # finite, beyond float32
    f["huge"] = tmp / "huge.npy"
    (tmp / "garbage.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)  # a TIFF header, then nonsense
    f["garbage"] = tmp / "garbage.tif"
    import zarr

    group = zarr.open_group(str(tmp / "s.zarr"), mode="w")  # a user's store: its array 0 is an input
    group.create_array("0", data=vol, chunks=(2, 16, 16))
    f["store"] = tmp / "s.zarr"
    (tmp / "a-folder").mkdir()
    f["folder"] = tmp / "a-folder"
    return f


OUT = "out.npy"  # every output goes here (under tmp)
W = "--weights"
CASES: dict[str, tuple[Callable[[dict], list], Callable[[dict], object] | None, str]] = {
    # shapes
    "zero_length_axis": (
        lambda f: ["reconstruct", f["empty"], OUT, "--alpha", "4"],
        lambda f: open_volume(f["empty"]),
        "empty",
    ),
    "zero_length_npy": (lambda f: ["info", f["empty_npy"]], lambda f: open_volume(f["empty_npy"]), "empty"),
    "truncated_tiff": (lambda f: ["info", f["trunc"]], lambda f: open_volume(f["trunc"]), "truncated"),
    "alpha_from_the_file_out_of_range": (  # z voxels half the xy ones: a mistake in the file, not in --alpha
        lambda f: ["reconstruct", f["thin_z"], OUT, W, f["weights"]],
        None,
        "its voxel sizes (z 2, x 4) give alpha 0.5, outside 1 to 100; if they are wrong, pass the anisotropy "
        "with --alpha",
    ),
    "folder_not_a_store": (lambda f: ["info", f["folder"]], lambda f: open_volume(f["folder"]), "not a zarr"),
    "output_only_an_extension": (lambda f: ["reconstruct", f["ok"], ".zarr", "--alpha", "4"], None, "e.g. iso.zarr"),
    "garbage_tiff": (
        lambda f: ["info", f["garbage"]],
        lambda f: open_volume(f["garbage"]),
        "check that it opens in Fiji or napari",
    ),
    "two_d": (lambda f: ["reconstruct", f["flat"], OUT, "--alpha", "4"], lambda f: open_volume(f["flat"]), "3D"),
    "values_beyond_float32": (
        lambda f: ["reconstruct", f["huge"], OUT, "--alpha", "4"],
        lambda f: reconstruct_volume(random_model(), f["huge"], InferenceSettings(alpha=4)),
        "beyond float32",
    ),
    "nan_values": (
        lambda f: ["reconstruct", f["nan"], OUT, "--alpha", "4"],
        lambda f: reconstruct_volume(random_model(), f["nan"], InferenceSettings(alpha=4)),
        "NaN",
    ),
    # metadata
    "zero_voxel": (lambda f: ["info", f["zero_voxel"]], lambda f: open_volume(f["zero_voxel"]), "not usable"),
    "negative_voxel": (
        lambda f: ["reconstruct", f["negative_voxel"], OUT],
        lambda f: open_volume(f["negative_voxel"]),
        "not usable",
    ),
    "nan_voxel": (lambda f: ["info", f["nan_voxel"]], lambda f: open_volume(f["nan_voxel"]), "not usable"),
    # parsing and numbers
    "region_extra_colons": (lambda f: ["reconstruct", f["ok"], OUT, "--region", "0:2:1,:,:"], None, "--region"),
    "region_out_of_range": (
        lambda f: ["reconstruct", f["ok"], OUT, W, f["weights"], "--region", "0:9,:,:"],
        None,
        "not inside",
    ),
    "region_negative_start": (  # argparse alone read "-1:4,:,:" as an option: "expected one argument"
        lambda f: ["reconstruct", f["ok"], OUT, W, f["weights"], "--region", "-1:4,:,:"],
        None,
        "'-1:4' is not a range",
    ),
    "chunks_count": (
        lambda f: ["reconstruct", f["ok"].with_suffix(".zarr"), "o.zarr", "--chunks", "8,8"],
        None,
        "--chunks",
    ),
    "cube_below_alpha": (lambda f: ["evaluate", f["ok"], "--alpha", "12", "--cube", "16"], None, "--cube"),
    "alpha_nan": (
        lambda f: ["reconstruct", f["ok"], OUT, "--alpha", "nan"],
        lambda f: InferenceSettings(alpha=float("nan")),
        "alpha",
    ),
    "scale_range": (
        lambda f: ["reconstruct", f["ok"], OUT, "--scale", "50"],
        lambda f: InferenceSettings(alpha=4, scale=50),
        "scale",
    ),
    "levels_zero": (lambda f: ["reconstruct", f["ok"], "o.zarr", "--levels", "0"], None, "--levels"),
    "workers_zero": (lambda f: ["reconstruct", f["ok"], "o.zarr", "--workers", "0"], None, "--workers"),
    "lr_zero": (lambda f: ["train", f["ok"], "--out", "x.safetensors", "--alpha", "4", "--lr", "0"], None, "--lr"),
    "batch_zero": (
        lambda f: ["train", f["ok"], "--out", "x.safetensors", "--alpha", "4", "--batch", "0"],
        None,
        "--batch",
    ),
    "steps_zero": (
        lambda f: ["train", f["ok"], "--out", "x.safetensors", "--alpha", "4", "--steps", "0"],
        None,
        "--steps",
    ),
    "cutoff_zero": (lambda f: ["evaluate", f["ok"], "--cutoff", "0"], None, "--cutoff"),
    # weights
    "unknown_weights": (lambda f: ["reconstruct", f["ok"], OUT, W, "no-such-weights"], None, "unknown weights"),
    "weights_not_a_file": (
        lambda f: ["info", f["ok"].with_suffix(".safetensors")],
        lambda f: load_weights(f["ok"].with_suffix(".safetensors")),
        "not found",
    ),
    # file system
    "json_path_under_a_file": (
        lambda f: ["evaluate", f["iso"], "--alpha", "2", "--cube", "16", "--json", f["weights"] / "x.json"],
        None,
        "is a file",
    ),
    "output_under_a_file": (
        lambda f: ["reconstruct", f["ok"], f["weights"] / "x.npy", W, f["weights"]],
        None,
        "is a file",
    ),
    "unknown_output_format": (lambda f: ["reconstruct", f["ok"], "out.xyz"], None, "unknown output format"),
    "json_path_is_a_folder": (
        lambda f: ["evaluate", f["iso"], "--alpha", "2", "--cube", "16", "--json", f["folder"]],
        None,
        "it is a folder",
    ),
    "output_inside_the_inputs_store": (
        lambda f: ["reconstruct", f["store"] / "0", f["store"] / "iso.ome.zarr", "--alpha", "4", W, f["weights"]],
        None,
        "lies inside the zarr store",
    ),
    "weights_inside_the_inputs_store": (
        lambda f: ["train", f["store"] / "0", "--out", f["store"] / "w.safetensors", "--alpha", "4", "--crop", "8"],
        None,
        "lies inside the zarr store",
    ),
}


def _abs(args: list, tmp: Path) -> list[str]:
    out = []
    for a in args:
        a = str(a)
        out.append(str(tmp / a) if a in (OUT, "o.zarr", "x.safetensors", "out.xyz") else a)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_ends_in_one_clear_line_and_loses_nothing(tmp_path, capsys, medulla, case) -> None:
    files = _files(tmp_path, medulla)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    folders = {p for p in tmp_path.rglob("*") if p.is_dir()}
    cli, python, message = CASES[case]
    code = main(_abs(cli(files), tmp_path))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "error:" in lines[0] and message in lines[0], err
    assert "Traceback" not in err
    if python is not None:
        with pytest.raises(NiivInputError, match=message.lstrip("-")):
            python(files)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, "an input changed, or an output (or a temporary file) was left behind"
    assert {p for p in tmp_path.rglob("*") if p.is_dir()} == folders, "a folder was left behind"


def test_the_json_report_path_is_checked_before_the_work(tmp_path, capsys, medulla) -> None:
    """A good run's --json lands where asked; the refusal above happens before any scoring."""
    files = _files(tmp_path, medulla)
    out = tmp_path / "scores.json"
    args = ["evaluate", str(files["iso"]), "--alpha", "2", "--cube", "16", W, str(files["weights"]), "--json", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    assert {s["method"] for s in json.loads(out.read_text())} >= {"bilinear", "bicubic"}


def _niiv(*args: object) -> tuple[int, str]:
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "napari_niiv.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )
    return res.returncode, res.stderr


@pytest.mark.slow  # real processes: what reaches stderr outside pytest's log capture
def test_in_a_real_process_the_message_is_the_only_line(tmp_path, medulla) -> None:
    """Libraries log or report on stderr behind niiv's back (tifffile on a damaged TIFF, s3fs's
    pending reads closed at exit after a failed remote open); in-process tests do not see that,
    a real process does: its stderr must hold exactly niiv's one line."""
    files = _files(tmp_path, medulla)
    before = files["trunc"].read_bytes()
    for args, phrase in (
        (["info", files["trunc"]], "truncated"),
        (["reconstruct", files["trunc"], tmp_path / "o.npy", "--alpha", "4"], "truncated"),
        (["info", "s3://napari-niiv-no-such-bucket/x.zarr"], "could not open it"),
    ):
        code, err = _niiv(*args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and phrase in lines[0], err
    assert files["trunc"].read_bytes() == before and not (tmp_path / "o.npy").exists()


def test_napari_open_of_a_truncated_tiff_says_it_is_truncated(tmp_path, medulla) -> None:
    """A TIFF cut short is niiv's to read, so its reader claims it and says why: it declined it
    (a plain error, not a SourceError), and napari said only that every reader refused the file."""
    from napari_niiv._napari.reader import get_reader

    files = _files(tmp_path, medulla)
    read = get_reader(str(files["trunc"]))
    assert read is not None
    with pytest.raises(NiivInputError, match="truncated"):
        read(str(files["trunc"]))
