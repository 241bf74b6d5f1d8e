"""User data is never overwritten or deleted: outputs that are, contain or lie inside an input,
foreign folders, links and other runs' outputs are refused with a message; stale locks recover, and
a lock another run holds or has just taken is never removed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_niiv.cli import main
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.store import (
    ArrayBlocks,
    Layout,
    OutputTaken,
    _take_over,
    output_lock,
    partial_path,
    write_ome_zarr,
)
from napari_niiv.inference.weights import save_weights
from tests.conftest import random_model


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return save_weights(tmp_path / "tiny.safetensors", random_model(), 4.0, None)


@pytest.fixture
def store(tmp_path: Path, medulla) -> Path:
    """A plain zarr group holding the input array at s.zarr/0."""
    path = tmp_path / "s.zarr"
    root = zarr.open_group(str(path), mode="w")
    arr = root.create_array("0", shape=(4, 24, 24), chunks=(4, 24, 24), dtype=np.uint8)
    arr[:] = medulla[:16, :24, :24].reshape(4, 4, 24, 24).mean(axis=1).astype(np.uint8)
    return path


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _run(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _reconstruct(capsys, src, out, weights, *extra) -> tuple[int, str]:
    levels = ["--levels", "1"] if str(out).endswith(".zarr") else []  # a .tif/.npy has none (refused: 2159ea4)
    return _run(capsys, "reconstruct", src, out, "--alpha", "4", "--weights", weights, *levels, *extra)


def test_an_output_that_contains_the_input_is_refused_even_with_overwrite(tmp_path, capsys, store, weights) -> None:
    before = _tree(store)
    code, err = _reconstruct(capsys, store / "0", store, weights, "--overwrite")
    assert code == 2 and "contains the input" in err and "Traceback" not in err
    assert _tree(store) == before  # the input is intact


def test_an_output_inside_the_input_or_through_a_link_to_it_is_refused(tmp_path, capsys, store, weights) -> None:
    code, err = _reconstruct(capsys, store / "0", store / "0" / "x.ome.zarr", weights)
    assert code == 2 and "lies inside the input" in err
    link = tmp_path / "link.zarr"
    link.symlink_to(store / "0", target_is_directory=True)
    before = _tree(store)
    code, err = _reconstruct(capsys, store / "0", link, weights, "--overwrite")
    assert code == 2 and "the output is the input" in err
    assert _tree(store) == before


def test_overwrite_replaces_only_niivs_own_stores(tmp_path, capsys, store, weights) -> None:
    foreign = tmp_path / "results.ome.zarr"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my analysis")
    code, err = _reconstruct(capsys, store / "0", foreign, weights, "--overwrite")
    assert code == 2 and "did not write" in err
    assert (foreign / "notes.txt").read_text() == "my analysis"

    ours = tmp_path / "iso.ome.zarr"
    assert _reconstruct(capsys, store / "0", ours, weights)[0] == 0
    assert _reconstruct(capsys, store / "0", ours, weights, "--overwrite")[0] == 0  # niiv's own: replaced

    link = tmp_path / "to-ours.ome.zarr"
    link.symlink_to(ours, target_is_directory=True)
    code, err = _reconstruct(capsys, store / "0", link, weights, "--overwrite")
    assert code == 2 and "is a link" in err and (ours / "zarr.json").exists()


@pytest.mark.parametrize(("what", "overwrite"), [("file", False), ("folder", False), ("folder", True)])
def test_an_output_that_appears_during_the_write_is_left_alone(tmp_path, what, overwrite) -> None:
    """The output path is checked when the write starts, and again before the finished store is
    renamed onto it: whatever the user put there meanwhile (a file, or a folder of their own, which
    --overwrite never replaces either) stays, the write says so, and the finished store waits in
    OUT.partial."""
    data = np.arange(8 * 12 * 10, dtype=np.uint16).reshape(8, 12, 10)
    out = tmp_path / "iso.ome.zarr"

    class UserMeanwhile(ArrayBlocks):
        def __call__(self, index):
            if what == "file":
                out.write_text("my notes")
            else:
                out.mkdir(exist_ok=True)
                (out / "mine.txt").write_text("my notes")
            return super().__call__(index)

    layout = Layout(data.shape, data.dtype, (8, 12, 10), levels=1)
    with pytest.raises(OutputTaken, match="appeared while") as caught:
        write_ome_zarr(out, layout, UserMeanwhile(data), overwrite=overwrite)
    assert (out.read_text() if what == "file" else (out / "mine.txt").read_text()) == "my notes"
    kept = caught.value.partial
    assert kept == partial_path(out) and str(kept) in str(caught.value)
    np.testing.assert_array_equal(np.asarray(zarr.open_group(str(kept), mode="r")["0"][:]), data)
    assert not out.with_name(out.name + ".lock").exists()


@pytest.mark.parametrize("name", ["iso.tif", "iso.npy"])
def test_a_whole_file_output_that_appears_while_computed_is_kept(tmp_path, capsys, store, weights, monkeypatch, name):
    """A .tif/.npy output is published only if its name is still free (with --overwrite it
    replaces): a file written there meanwhile by another program is kept, and the run says so."""
    from napari_niiv.inference import reconstructor

    out = tmp_path / name
    original = reconstructor.assemble

    def user_meanwhile(*args, **kwargs):
        out.write_text("my notes")
        return original(*args, **kwargs)

    monkeypatch.setattr(reconstructor, "assemble", user_meanwhile)
    code, err = _reconstruct(capsys, store / "0", out, weights)
    assert code == 2 and "appeared while niiv computed it" in err and "left as it is" in err
    assert out.read_text() == "my notes" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    code, err = _reconstruct(capsys, store / "0", out, weights, "--overwrite")
    assert code == 0 and out.read_bytes() != b"my notes"


def test_a_foreign_partial_folder_is_never_deleted(tmp_path, capsys, store, weights) -> None:
    partial = tmp_path / "iso.ome.zarr.partial"
    partial.mkdir()
    (partial / "keep.txt").write_text("not niiv's")
    code, err = _reconstruct(capsys, store / "0", tmp_path / "iso.ome.zarr", weights, "--restart")
    assert code == 2 and "not an unfinished niiv run" in err
    code, err = _reconstruct(capsys, store / "0", tmp_path / "iso.ome.zarr", weights)
    assert code == 2 and "not an unfinished niiv run" in err
    assert "chunks written so far" not in err, "a refusal must not claim the foreign folder holds niiv's chunks"
    assert (partial / "keep.txt").read_text() == "not niiv's"


@pytest.mark.parametrize("name", ["iso.ome.zarr", "iso.tif"])
def test_a_second_run_on_the_same_output_is_refused_naming_the_first(tmp_path, capsys, store, weights, name) -> None:
    out = tmp_path / name
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = out.with_name(out.name + ".lock")
        lock.write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid, "started": "now"}))
        code, err = _reconstruct(capsys, store / "0", out, weights)
        assert code == 2 and f"pid {holder.pid}" in err and "another niiv run" in err
        assert not out.exists() and lock.exists()  # the other run's lock is left alone
    finally:
        holder.kill()
        holder.wait()
    # that process is gone now: its lock is stale and taken over
    assert _reconstruct(capsys, store / "0", out, weights)[0] == 0
    assert out.exists() and not lock.exists()


def test_restart_never_discards_a_running_jobs_store(tmp_path, capsys, store, weights) -> None:
    """--restart discards OUT.partial only once this run holds OUT's lock: while another run
    writes it, its store stays whole and the restart is refused."""
    out = tmp_path / "iso.ome.zarr"
    assert _reconstruct(capsys, store / "0", out, weights)[0] == 0
    out.rename(partial_path(out))  # a store in the making, as the other run has it
    (partial_path(out) / ".niiv").mkdir(exist_ok=True)
    (partial_path(out) / ".niiv" / "job.json").write_text("{}")
    before = _tree(partial_path(out))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = out.with_name(out.name + ".lock")
        lock.write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid, "started": "now"}))
        code, err = _reconstruct(capsys, store / "0", out, weights, "--restart")
        assert code == 2 and "another niiv run" in err
        assert _tree(partial_path(out)) == before
    finally:
        holder.kill()
        holder.wait()


def test_an_input_inside_the_outputs_unfinished_store_is_refused(tmp_path, capsys, store, weights) -> None:
    """OUT.partial is what --restart and a failed write remove: an input inside it is refused
    before anything is removed."""
    out = tmp_path / "iso.ome.zarr"
    store.rename(partial_path(out))
    (partial_path(out) / ".niiv").mkdir()
    (partial_path(out) / ".niiv" / "job.json").write_text("{}")
    before = _tree(partial_path(out))
    for extra in ((), ("--restart",)):
        code, err = _reconstruct(capsys, partial_path(out) / "0", out, weights, *extra)
        assert code == 2 and "unfinished store of the output" in err, err
        assert _tree(partial_path(out)) == before


def test_the_lock_is_released_when_a_write_fails(tmp_path) -> None:
    out = tmp_path / "x.ome.zarr"
    with pytest.raises(RuntimeError), output_lock(out):
        assert out.with_name(out.name + ".lock").exists()
        raise RuntimeError("boom")
    assert not out.with_name(out.name + ".lock").exists()


def _lock(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def test_the_holder_thread_may_take_its_lock_again_and_another_thread_is_refused(tmp_path) -> None:
    """The CLI holds the lock around its checks and then train() takes it too: the same thread
    nests; any other thread of the process is another writer and is refused, naming the holder."""
    out = tmp_path / "w.safetensors"
    refusals: list[str] = []

    def other() -> None:
        try:
            with output_lock(out):
                pass
        except NiivInputError as exc:
            refusals.append(str(exc))

    with output_lock(out):
        with output_lock(out):
            assert _lock(out).exists()
        assert _lock(out).exists(), "the nested release freed the outer hold"
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(refusals) == 1 and f"pid {os.getpid()} on {socket.gethostname()}" in refusals[0], refusals
    assert not _lock(out).exists()


def test_stale_and_foreign_locks(tmp_path) -> None:
    out = tmp_path / "w.safetensors"
    host = socket.gethostname()
    # this process's own pid, left by an earlier process that had it (pid reuse): stale
    _lock(out).write_text(json.dumps({"host": host, "pid": os.getpid(), "started": "before"}))
    with output_lock(out):
        assert json.loads(_lock(out).read_text())["started"] != "before"
    # an empty lock (its writer killed between creating and filling it): refused while it may be
    # in the making, taken over once old
    _lock(out).write_text("")
    with pytest.raises(NiivInputError, match="another niiv run"), output_lock(out):
        pass
    os.utime(_lock(out), (time.time() - 3600, time.time() - 3600))
    with output_lock(out):
        assert json.loads(_lock(out).read_text())["pid"] == os.getpid()
    # a lock of another host cannot be checked from here: never taken over
    _lock(out).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "now"}))
    with pytest.raises(NiivInputError, match="pid 1 on elsewhere"), output_lock(out):
        pass
    assert json.loads(_lock(out).read_text())["host"] == "elsewhere"


def test_a_takeover_never_removes_a_lock_another_run_just_took(tmp_path) -> None:
    """Two runs find the same stale lock; the first replaces it with its own before the second
    moves it aside: the second must put that fresh lock back and report it, not delete it."""
    lock = _lock(tmp_path / "w.safetensors")
    fresh = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "just now"})
    lock.write_text(fresh)
    assert not _take_over(lock, stale_text='{"pid": 999999999}')
    assert lock.read_text() == fresh and [p.name for p in tmp_path.iterdir()] == [lock.name]
    assert _take_over(lock, stale_text=fresh) and not lock.exists()
