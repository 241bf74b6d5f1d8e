"""A full disk and a read-only output folder, on real (tmpfs) file systems: a clear line, exit 2,
the input untouched and nothing half-written; a read-only folder is refused before any work."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from napari_niiv.cli import main
from napari_niiv.inference.weights import save_weights
from tests.conftest import random_model, write_tif

pytestmark = pytest.mark.slow


def _mount(path: Path, options: str) -> None:
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if res.returncode != 0:  # not root, or no CAP_SYS_ADMIN in this container
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}): the disk faults need a real small file system")


@pytest.fixture
def mounts(tmp_path):
    made: list[Path] = []

    def make(name: str, options: str) -> Path:
        path = tmp_path / name
        _mount(path, options)
        made.append(path)
        return path

    yield make
    for path in made:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def inputs(tmp_path, medulla):
    src = tmp_path / "aniso.tif"
    write_tif(src, medulla[:32, :48, :48].reshape(8, 4, 48, 48).mean(axis=1).astype(np.uint8))
    weights = save_weights(tmp_path / "tiny.safetensors", random_model(), 4.0, None)
    return src, weights


def _run(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".npy", ".ome.zarr"])
def test_a_full_disk_ends_in_one_line_and_publishes_nothing(capsys, mounts, inputs, suffix) -> None:
    src, weights = inputs
    before = src.read_bytes()
    disk = mounts("small", "size=64k")  # the output (32 x 48 x 48 uint8, ~74 kB) does not fit
    out = disk / f"iso{suffix}"
    levels = ["--levels", "1"] if suffix == ".ome.zarr" else []  # a .npy has none (refused since 2159ea4)
    code, err = _run(capsys, "reconstruct", src, out, "--alpha", "4", "--weights", weights, *levels)
    lines = [line for line in err.splitlines() if line.strip() and "reconstructing" not in line]
    assert code == 2, err
    said = [line for line in lines if line.startswith("niiv reconstruct:")]  # besides the plan and the runner
    assert len(said) == 1 and said[0] == lines[-1], err
    assert ("free" in said[0] and "MB" in said[0]) or "No space left" in said[0], err
    assert "Traceback" not in err
    assert not out.exists() and not list(disk.glob(".*.tmp"))  # nothing half-written under the real name
    assert src.read_bytes() == before


def test_a_read_only_folder_is_refused_before_any_work(capsys, mounts, inputs) -> None:
    src, weights = inputs
    folder = mounts("readonly", "ro,size=1m")
    code, err = _run(capsys, "reconstruct", src, folder / "iso.npy", "--alpha", "4", "--weights", weights)
    assert code == 2 and "refuses new files" in err and "Traceback" not in err
    assert "reconstructing" not in err  # refused up front: no reconstruction ran
