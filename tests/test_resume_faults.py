"""Faults around resumable reconstruction with real processes: a changed input between a kill and
the rerun is refused, never silently reused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_niiv.cli import main
from napari_niiv.inference.store import partial_path
from napari_niiv.inference.weights import save_weights
from tests.conftest import random_model

pytestmark = pytest.mark.slow  # real processes, killed


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return save_weights(tmp_path / "tiny.safetensors", random_model(), 4.0, None)


def _source(tmp_path: Path, medulla: np.ndarray) -> Path:
    """Real FIB-SEM pooled by 4 along z, as a zarr array: (16, 48, 48) uint8."""
    src = tmp_path / "aniso.zarr"
    vol = medulla[:64, :48, :48].reshape(16, 4, 48, 48).mean(axis=1).astype(np.uint8)
    zarr.open_array(str(src), mode="w", shape=vol.shape, chunks=(8, 48, 48), dtype=np.uint8)[:] = vol
    return src


def _args(src: Path, out: Path, weights: Path) -> list[str]:
    args = ["reconstruct", str(src), str(out), "--alpha", "4", "--weights", str(weights)]
    return [*args, "--chunks", "8,16,16", "--orientation", "xz", "--precision", "fp32", "--levels", "1"]


def _start(src: Path, out: Path, weights: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "napari_niiv.cli", *_args(src, out, weights)]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)


def _wait_for_chunks(proc: subprocess.Popen, out: Path, chunks: int) -> None:
    """Until the running ``proc`` has written at least ``chunks`` level-0 chunks of ``out``."""
    done = partial_path(out) / ".niiv" / "done" / "0"
    deadline = time.monotonic() + 120
    while not (done.exists() and len(list(done.iterdir())) >= chunks):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no chunks written in two minutes"
        time.sleep(0.02)


def _kill_after(proc: subprocess.Popen, out: Path, chunks: int) -> None:
    _wait_for_chunks(proc, out, chunks)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def test_a_changed_input_between_kill_and_resume_is_refused(tmp_path, capsys, weights, medulla) -> None:
    src = _source(tmp_path, medulla)
    vol = zarr.open_array(str(src), mode="r")[:]
    out = tmp_path / "iso.ome.zarr"
    _kill_after(_start(src, out, weights), out, 4)
    assert partial_path(out).exists() and not out.exists()

    # the same planes in another order: same histogram, same shape, same normalisation; the files'
    # times are put back as a copy that preserves them would, so only the content tells
    times = {p: p.stat().st_mtime_ns for p in src.rglob("*") if p.is_file()}
    reordered = vol[::-1].copy()
    zarr.open_array(str(src), mode="r+")[:] = reordered
    for p, ns in times.items():
        os.utime(p, ns=(ns, ns))
    code = main(_args(src, out, weights))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "input" in err and "content" in err and "Traceback" not in err
    assert not out.exists()  # nothing stale was published
    np.testing.assert_array_equal(zarr.open_array(str(src), mode="r")[:], reordered)  # input untouched


def _levels(path: Path) -> list[np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    return [np.asarray(root[k]) for k in sorted(root.array_keys())]


def test_ctrl_c_during_reconstruct_keeps_the_chunks_and_the_rerun_equals_an_uninterrupted_run(
    tmp_path, capsys, weights, medulla
) -> None:
    src = _source(tmp_path, medulla)
    out = tmp_path / "iso.ome.zarr"
    proc = _start(src, out, weights)
    _wait_for_chunks(proc, out, 4)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert "run the same command again" in err.decode() and "Traceback" not in err.decode()
    said = [ln for ln in err.decode().splitlines() if ln.startswith("niiv reconstruct:")]
    assert said == [  # one line says what happened and what to do
        f"niiv reconstruct: interrupted; the chunks written so far are in {partial_path(out)}: run the same "
        "command again to write only the missing ones (or pass --restart to begin anew)"
    ], err.decode()
    assert partial_path(out).exists() and not out.exists()
    assert not out.with_name(out.name + ".lock").exists()  # the lock went with the run

    assert main(_args(src, out, weights)) == 0
    straight = tmp_path / "straight.ome.zarr"
    assert main(_args(src, straight, weights)) == 0
    capsys.readouterr()
    for resumed, uninterrupted in zip(_levels(out), _levels(straight), strict=True):
        np.testing.assert_array_equal(resumed, uninterrupted)


def test_a_second_real_run_on_the_same_output_is_refused_while_the_first_writes(
    tmp_path, capsys, weights, medulla
) -> None:
    src = _source(tmp_path, medulla)
    out = tmp_path / "iso.ome.zarr"
    first = _start(src, out, weights)
    lock = out.with_name(out.name + ".lock")
    try:
        deadline = time.monotonic() + 120
        while not (partial_path(out) / ".niiv" / "done").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        assert lock.exists()
        code = main(_args(src, out, weights))
        err = capsys.readouterr().err
        assert code == 2 and f"pid {first.pid}" in err and "another niiv run" in err
    finally:
        first.wait(timeout=300)
        first.stderr.close()
    assert first.returncode == 0 and out.exists() and not lock.exists()  # the first run was not disturbed


def test_a_nan_found_while_writing_says_how_to_rerun_once_fixed(tmp_path, capsys) -> None:
    """One NaN that the checks' sample of the volume misses is found by the block that reads it:
    the run stops with one line saying that the kept OUT.partial needs --restart once the input is
    fixed, and the corrected input then reconstructs."""
    vol = np.random.default_rng(0).random((8, 512, 512)).astype(np.float32)
    vol[1, 1, 101] = np.nan
    src, out = tmp_path / "a.npy", tmp_path / "iso.zarr"
    np.save(src, vol)
    weights = save_weights(tmp_path / "tiny.safetensors", random_model(), 2.0, None)
    args = ["reconstruct", str(src), str(out), "--alpha", "2", "--weights", str(weights)]
    args += ["--region", "0:4,0:48,0:96", "--chunks", "8,48,48", "--levels", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "NaN" in err and str(partial_path(out)) in err and "--restart" in err and "Traceback" not in err
    vol[1, 1, 101] = 0.5
    np.save(src, vol)
    assert main(args) == 2 and "--restart" in capsys.readouterr().err  # the kept chunks would be stale
    assert main([*args, "--restart"]) == 0 and out.exists() and not partial_path(out).exists()
