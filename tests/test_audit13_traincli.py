"""Audit 13, `niiv train`'s resume and checkpoint edges as a user meets them: a resume of a complete
run advised a larger --steps, which a resume refuses; a resume with another --init than the run
started from was silently accepted (it continued the checkpoint's weights whatever --init said)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_niiv.cli import main
from napari_niiv.inference.weights import load_weights, resolve_weights, save_weights
from napari_niiv.training.train import checkpoint_path

from .conftest import random_model, write_tif

CLI = ["--alpha", "4", "--arch", "fast", "--steps", "2", "--batch", "2", "--crop", "32", "--device", "cpu"]
# fine-tuning keeps the start's architecture: no --arch
FINE = ["--alpha", "4", "--steps", "2", "--batch", "2", "--crop", "32", "--device", "cpu"]


def _cli(capsys, *args) -> tuple[int, str]:
    code = main(["train", *(str(a) for a in args)])
    return code, capsys.readouterr().err


@pytest.fixture
def volume(tmp_path, medulla):
    path = tmp_path / "v.tif"
    write_tif(path, medulla[:, :48, :48])
    return path


@pytest.mark.slow  # four runs
def test_a_resume_of_a_complete_run_gives_advice_that_works(tmp_path, capsys, volume) -> None:
    """It said 'give a larger --steps with --resume', and that command is refused (steps set the
    learning-rate schedule): it now says to fine-tune the weights in a new run, which works."""
    out = tmp_path / "w.safetensors"
    assert _cli(capsys, volume, "--out", out, *CLI)[0] == 0
    code, err = _cli(capsys, volume, "--out", out, *CLI, "--resume")
    assert code == 0 and "nothing left to train" in err, err
    assert "larger --steps" not in err, err
    assert f"--init {out} --out ANOTHER.safetensors" in err, err
    # what the old advice led to
    code, refused = _cli(capsys, volume, "--out", out, *[a if a != "2" else "4" for a in CLI], "--resume")
    assert code == 2 and "steps 2 (this run: 4)" in refused, refused
    # what the new one does
    more = tmp_path / "more.safetensors"
    code, err = _cli(capsys, volume, "--out", more, *FINE, "--init", out)
    assert code == 0, err
    assert load_weights(more).card["fine_tuned_from"] == str(out)


def test_a_resume_with_another_init_is_refused(tmp_path, capsys, volume) -> None:
    """A resume with --init B of a run started from A (same architecture, same settings) trained on
    from the checkpoint as if B were never given, and said 'fine-tuning B'."""
    start = load_weights(resolve_weights("niiv-fast"))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path, name in ((a, "a"), (b, "b")):
        save_weights(path, start.model, start.alpha, start.normalisation, card={**start.card, "name": name})
    out = tmp_path / "w.safetensors"
    assert _cli(capsys, volume, "--out", out, *FINE, "--init", a)[0] == 0
    ckpt = checkpoint_path(out).read_bytes()
    code, err = _cli(capsys, volume, "--out", out, *FINE, "--init", b, "--resume")
    assert code == 2, err
    assert f"its run started from the weights {a} (--init), and --init {b} is not that file" in err, err
    assert checkpoint_path(out).read_bytes() == ckpt
    # its own start still resumes
    code, err = _cli(capsys, volume, "--out", out, *FINE, "--init", a, "--resume")
    assert code == 0 and "nothing left to train" in err, err


@pytest.mark.parametrize("url", ["s3://bucket/w.safetensors", "https://example.org/w.safetensors"])
def test_a_url_as_out_is_refused_before_any_work(tmp_path, capsys, volume, monkeypatch, url) -> None:
    """--out s3://bucket/w.safetensors trained and wrote a local folder 's3:/bucket' with the weights in it,
    saying it wrote 's3:/bucket/w.safetensors'."""
    monkeypatch.chdir(tmp_path)
    code, err = _cli(capsys, volume, "--out", url, *CLI)
    assert code == 2 and f"--out {url}: niiv train writes weights to a path on this machine" in err, err
    assert "training" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["v.tif"]


def test_a_cut_short_checkpoint_says_to_start_a_new_run(tmp_path, capsys, volume) -> None:
    """A checkpoint cut short (a copy that did not finish, a full disk outside niiv's save) said 'download,
    copy or train it again', a weights file's advice: a run's checkpoint is resumed or started anew."""
    out = tmp_path / "w.safetensors"
    assert _cli(capsys, volume, "--out", out, *CLI)[0] == 0
    ckpt = checkpoint_path(out)
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    code, err = _cli(capsys, volume, "--out", out, *CLI, "--resume")
    assert code == 2 and "cut short" in err, err
    assert "start a new run (niiv train: without --resume, with --overwrite" in err, err
    assert "train it again" not in err, err  # the weights file's advice, inside the checkpoint's (review)
    code, err = _cli(capsys, volume, "--out", out, *CLI, "--overwrite")
    assert code == 0 and load_weights(checkpoint_path(out)).train_state["step"] == 2, err


def test_resume_with_overwrite_is_refused_as_a_contradiction(tmp_path, capsys, volume) -> None:
    """--resume --overwrite resumed silently, the --overwrite (start anew) ignored."""
    out = tmp_path / "w.safetensors"
    assert _cli(capsys, volume, "--out", out, *CLI)[0] == 0
    before = out.read_bytes(), checkpoint_path(out).read_bytes()
    code, err = _cli(capsys, volume, "--out", out, *CLI, "--resume", "--overwrite", "--seed", "1")
    assert code == 2 and "--overwrite starts a new run in its place: give one of them" in err, err
    assert (out.read_bytes(), checkpoint_path(out).read_bytes()) == before


def test_a_save_reaches_the_disk_before_its_name_does(tmp_path, monkeypatch) -> None:
    """Saves were renamed into place unflushed: after a power loss the checkpoint's name could stand on an
    empty file (the rename on disk before the data), though the user guide says a power loss keeps the last
    checkpoint. The temporary file is flushed before the rename, the folder after it."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b) -> None:
        events.append(("rename", str(b)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "w.ckpt.safetensors"
    save_weights(out, random_model(), 4.0, None)
    assert [e[0] for e in events] == ["fsync", "rename", "fsync"], events
    assert re.fullmatch(r"\.w\.ckpt\.safetensors\.[0-9a-f]{32}\.tmp", Path(events[0][1]).name), events
    assert events[1][1] == str(out) and events[2][1] == str(tmp_path), events


def test_a_run_killed_while_writing_its_weights_is_said_to_be_complete(tmp_path, capsys, volume) -> None:
    """A complete run's checkpoint whose weights were never written (a kill during that save) or moved
    away was called 'an unfinished run' (pass --resume to continue it) with no word that only the weights
    were missing, and its --resume said OUT 'already holds' the weights it had
    just written."""
    out = tmp_path / "w.safetensors"
    assert _cli(capsys, volume, "--out", out, *CLI)[0] == 0
    weights = out.read_bytes()
    out.unlink()
    code, err = _cli(capsys, volume, "--out", out, *CLI)
    assert code == 2 and f"its steps are all done, 2 of 2, but its weights {out} are missing" in err, err
    assert not out.exists()
    code, err = _cli(capsys, volume, "--out", out, *CLI, "--resume")
    assert code == 0 and f"nothing left to train: wrote the missing weights {out} from the checkpoint's step 2" in err
    assert "already holds" not in err and load_weights(out).card["steps"] == 2
    assert len(out.read_bytes()) == len(weights)


def _in_tmpfs(folder: Path, size: str, script: str) -> subprocess.CompletedProcess | None:
    """Run a Python ``script`` with a fresh tmpfs of ``size`` on ``folder`` (its own user and mount
    namespace, as tests/test_train_faults.py does), or None where this machine allows none."""
    prefix = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size={size} none "$0" && exec "$@"', str(folder)]
    if shutil.which("unshare") is None or subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        return None
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_an_oserror_not_a_traceback(tmp_path) -> None:
    """A checkpoint save that filled the disk raised safetensors' own SafetensorError, which the training
    loop (catching OSError: 'could not write ..., the last checkpoint ... is intact; free space, then
    resume') let through: `niiv train` ended in a traceback."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = f"""
import errno
from pathlib import Path
from napari_niiv.inference.weights import save_weights
from napari_niiv.model import NiivConfig, NiivModel
try:
    save_weights(Path({str(disk)!r}) / "w.safetensors", NiivModel(NiivConfig.named("v1")), 4.0, None)
except OSError as exc:
    print("OSError", exc.errno == errno.ENOSPC, sorted(p.name for p in Path({str(disk)!r}).iterdir()))
"""
    res = _in_tmpfs(disk, "1m", script)
    if res is None:
        pytest.skip("no small tmpfs can be mounted here (unshare -rm)")
    assert res.stdout.strip() == "OSError True []", res.stdout + res.stderr


@pytest.mark.slow
def test_a_resume_on_the_disk_its_run_fitted_on_is_not_refused_for_room(tmp_path, medulla) -> None:
    """The room check counted the checkpoint and weights a resume replaces as taken: a run that fitted
    (50 MB disk, 43 MB needed) could not be resumed there ('34 MB free; training needs about 43 MB')."""
    disk = tmp_path / "disk"
    disk.mkdir()
    volume = tmp_path / "v.npy"
    np.save(volume, medulla[:, :32, :32])
    script = f"""
import numpy as np
from pathlib import Path
from napari_niiv.training.train import TrainSettings, train
s = TrainSettings(alpha=4.0, architecture="v1", steps=2, batch=2, crop=16, points=64, warmup=1, device="cpu")
out, vol = Path({str(disk)!r}) / "w.safetensors", np.load({str(volume)!r})
print(train([vol], s, out, progress=False).steps_done, end=" ")
print(train([vol], s, out, progress=False, resume=True).steps_done)
"""
    res = _in_tmpfs(disk, "50m", script)
    if res is None:
        pytest.skip("no small tmpfs can be mounted here (unshare -rm)")
    assert res.stdout.strip() == "2 2", res.stdout + res.stderr[-2000:]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads which files the process maps (Linux)")
def test_a_resumed_optimiser_does_not_keep_the_replaced_checkpoint_on_the_disk(tmp_path, medulla) -> None:
    """The optimiser state a resume restored was the checkpoint file's own mapped tensors: the first
    checkpoint save replaced the file, but the old one's room on the disk stayed taken until the run
    ended (a resume on a disk its run had fitted on then ran out of space at a save)."""
    import torch

    from napari_niiv.inference.weights import restore_optimizer
    from napari_niiv.training.train import TrainSettings, train

    out = tmp_path / "w.safetensors"
    settings = TrainSettings(alpha=4.0, architecture="fast", steps=1, batch=2, crop=16, points=64, warmup=1)
    train([medulla[:, :32, :32]], settings, out, progress=False)
    ckpt = checkpoint_path(out)
    state = load_weights(ckpt, with_optimizer=True)
    optimizer = torch.optim.Adam(state.model.parameters())
    restore_optimizer(optimizer, state)
    del state
    assert str(ckpt) not in Path("/proc/self/maps").read_text()
    assert optimizer.state_dict()["state"]  # restored
