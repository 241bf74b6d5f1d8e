"""`niiv train` under faults, in real processes: Ctrl-C (SIGINT) and SIGKILL mid-run, then --resume
to the same weights as an uninterrupted run (bit for bit with --steps; with --minutes what the user
guide promises instead); a kill during a checkpoint write; two runs on one --out; resumes of
another run refused; --init by name; outputs that cannot be written and bad held-out volumes
refused before the first step."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_niiv.inference.weights import DEFAULT_WEIGHTS, load_weights, resolve_weights
from napari_niiv.training.train import TrainSettings, checkpoint_path, train

from .conftest import write_tif

pytestmark = pytest.mark.slow  # each test starts several Python processes that import torch

STEPS = 30
# One thread: the processes share the machine with the test run, and every run sees the same.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMEOUT = 300


def train_argv(volume: Path, out: Path, *extra: str, steps: int = STEPS, alpha: float = 4) -> list[str]:
    return [
        sys.executable,
        "-m",
        "napari_niiv.cli",
        "train",
        str(volume),
        "--out",
        str(out),
        "--alpha",
        f"{alpha:g}",
        "--steps",
        str(steps),
        "--batch",
        "2",
        "--crop",
        "16",
        "--seed",
        "3",
        "--device",
        "cpu",
        *extra,
    ]


class Training:
    """A `niiv train` process whose stderr (tqdm's progress, then messages) is read as it comes."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
        self.err = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        while chunk := os.read(self.proc.stderr.fileno(), 4096):
            self.err += chunk

    @property
    def text(self) -> str:
        return self.err.decode(errors="replace")

    def steps_done(self) -> int:
        counts = re.findall(rf"(\d+)/{STEPS} \[", self.text)
        return int(counts[-1]) if counts else 0

    def wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (exit {self.proc.returncode}) before {what}:\n{self.text[-2000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"no {what} within {TIMEOUT} s:\n{self.text[-2000:]}")
            time.sleep(0.02)

    def finish(self) -> tuple[int, str]:
        code = self.proc.wait(TIMEOUT)
        self._reader.join(10)
        return code, self.text


def run(argv: list[str]) -> tuple[int, str]:
    res = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
    return res.returncode, res.stderr


def last_line(err: str) -> str:
    lines = [ln for ln in re.split(r"[\r\n]", err) if ln.strip()]
    return lines[-1] if lines else ""


def refused(code: int, err: str, *phrases: str) -> str:
    """Exit 2 with a one-line message holding ``phrases``, no traceback, no training started."""
    line = last_line(err)
    assert code == 2, err
    assert "Traceback" not in err and line.startswith("niiv train: error: "), err
    assert "training:" not in err, f"training started before the refusal:\n{err}"
    for phrase in phrases:
        assert phrase in line, line
    return line


def same_weights(a: Path, b: Path) -> None:
    sa, sb = load_weights(a).model.state_dict(), load_weights(b).model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs by {(sa[k] - sb[k]).abs().max().item():.3g}"


def ckpt_step(out: Path) -> int:
    return int(load_weights(checkpoint_path(out)).train_state["step"])


def lock_of(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


@pytest.fixture(scope="module")
def volume(tmp_path_factory, medulla) -> Path:
    """A 64^3 crop of real FIB-SEM."""
    path = tmp_path_factory.mktemp("data") / "medulla.tif"
    write_tif(path, medulla)
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory, volume) -> Path:
    """Weights of an uninterrupted run: what every interrupted and resumed run must reproduce."""
    out = tmp_path_factory.mktemp("straight") / "w.safetensors"
    code, err = run(train_argv(volume, out))
    assert code == 0, err
    return out


def test_sigint_saves_a_checkpoint_and_resume_is_identical(tmp_path, volume, straight) -> None:
    out = tmp_path / "w.safetensors"
    argv = train_argv(volume, out, "--checkpoint-every", "1000")  # only Ctrl-C writes a checkpoint
    first = Training(argv)
    first.wait_for(lambda: first.steps_done() >= 3, "3 steps")
    seen = first.steps_done()
    first.proc.send_signal(signal.SIGINT)
    code, err = first.finish()
    assert code == 130, err
    assert "Traceback" not in err
    step = ckpt_step(out)
    assert seen <= step < STEPS, f"the checkpoint holds step {step}; {seen} were done when Ctrl-C came"
    assert last_line(err) == (
        f"niiv train: interrupted; step {step} of {STEPS} saved in {checkpoint_path(out)}: "
        "to continue, run the same command with --resume"
    )
    assert not out.exists(), "an interrupted run wrote final weights"
    code, err = run([*argv, "--resume"])
    assert code == 0, err
    assert f"wrote {out} after {STEPS} steps" in err
    same_weights(straight, out)
    history = load_weights(checkpoint_path(out)).train_state["history"]
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))


def test_sigkill_then_resume_is_identical_from_the_last_checkpoint(tmp_path, volume, straight) -> None:
    out = tmp_path / "w.safetensors"
    argv = train_argv(volume, out, "--checkpoint-every", "4")
    killed = Training(argv)
    killed.wait_for(lambda: checkpoint_path(out).exists() and killed.steps_done() >= 6, "a checkpoint and 6 steps")
    killed.proc.send_signal(signal.SIGKILL)
    code, _ = killed.finish()
    assert code == -signal.SIGKILL
    step = ckpt_step(out)
    assert step % 4 == 0 and 4 <= step < STEPS
    assert not out.exists()
    assert lock_of(out).exists(), "a killed run cannot remove its lock"
    code, err = run([*argv, "--resume"])
    assert code == 0, err  # the killed run's lock is stale: taken over
    same_weights(straight, out)
    assert not lock_of(out).exists()
    # a second resume of the finished run changes nothing
    code, err = run([*argv, "--resume"])
    assert code == 0, err
    same_weights(straight, out)


def test_a_second_run_on_the_same_out_is_refused_naming_the_first_which_finishes_undisturbed(
    tmp_path, volume, straight
) -> None:
    out = tmp_path / "w.safetensors"
    argv = train_argv(volume, out, "--checkpoint-every", "4")
    first = Training(argv)
    first.wait_for(lambda: checkpoint_path(out).exists() and first.steps_done() >= 5, "a checkpoint and 5 steps")
    first.proc.send_signal(signal.SIGSTOP)  # hold it mid-run (alive, lock held) while the others try
    try:
        assert first.proc.poll() is None, "the first run ended before the second could meet it"
        held = checkpoint_path(out).read_bytes()
        for extra in ((), ("--resume",), ("--overwrite",)):
            code, err = run([*argv, *extra])
            line = refused(code, err, f"pid {first.proc.pid} on {socket.gethostname()}", "another niiv run")
            assert str(out) in line and "wait for it to finish" in line, line
        assert checkpoint_path(out).read_bytes() == held, "a refused run touched the first run's checkpoint"
        assert lock_of(out).exists() and not out.exists()
    finally:
        first.proc.send_signal(signal.SIGCONT)
    code, err = first.finish()
    assert code == 0 and f"wrote {out} after {STEPS} steps" in err, err
    same_weights(straight, out)  # undisturbed: what an uninterrupted run alone writes
    assert not lock_of(out).exists(), "the lock outlived its run"


def test_a_stale_lock_is_taken_over(tmp_path, volume) -> None:
    """A lock whose process is gone (a real pid that has exited), or one left empty by a process
    killed while writing it (old enough not to be in the making), does not block the next run."""
    out = tmp_path / "w.safetensors"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock_of(out).write_text(f'{{"host": "{socket.gethostname()}", "pid": {gone.pid}, "started": "earlier"}}')
    code, err = run(train_argv(volume, out, steps=1))
    assert code == 0 and "Traceback" not in err, err
    assert out.exists() and not lock_of(out).exists()
    lock_of(out).write_text("")
    os.utime(lock_of(out), (time.time() - 3600, time.time() - 3600))
    code, err = run(train_argv(volume, out, "--overwrite", steps=1))
    assert code == 0 and "Traceback" not in err, err
    assert not lock_of(out).exists()


def test_a_kill_during_a_checkpoint_write_leaves_a_temporary_the_next_run_removes(tmp_path, volume, straight) -> None:
    """A real SIGKILL sent the moment the checkpoint's temporary file appears (checkpoints every
    step; a kill that still lands after the rename is retried, up to five times). The resume
    removes the leftover (only names the tool's atomic saves of this --out make) and is identical
    to an uninterrupted run; files that merely look alike are left alone."""
    out = tmp_path / "w.safetensors"
    argv = train_argv(volume, out, "--checkpoint-every", "1")
    stray = re.compile(r"\.w\.ckpt\.safetensors\.[0-9a-f]{32}\.tmp")
    left: list[str] = []
    for _ in range(5):
        again = ["--resume"] if checkpoint_path(out).exists() else []  # none if the first write was cut
        proc = subprocess.Popen([*argv, *again], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if any(stray.fullmatch(name) for name in os.listdir(tmp_path)):
                proc.send_signal(signal.SIGKILL)
                break
        proc.kill()
        proc.wait(TIMEOUT)
        assert proc.returncode == -signal.SIGKILL, f"the run ended (exit {proc.returncode}) before a checkpoint write"
        left = [name for name in os.listdir(tmp_path) if stray.fullmatch(name)]
        if left:
            break
    assert left, "no kill landed during a checkpoint write in five tries"
    assert not checkpoint_path(out).exists() or ckpt_step(out) < STEPS
    lookalikes = {
        ".w.ckpt.safetensors.tmp": b"a user's file",
        ".w.ckpt.safetensors.notes.tmp": b"a user's file",
        ".w.ckpt.safetensors.0123456789ABCDEF0123456789ABCDEF.tmp": b"upper case: not a name niiv makes",
        ".other.safetensors.0123456789abcdef0123456789abcdef.tmp": b"another output's: not this run's to remove",
        "w.ckpt.safetensors.0123456789abcdef0123456789abcdef.tmp": b"no leading dot",
    }
    for name, data in lookalikes.items():
        (tmp_path / name).write_bytes(data)
    code, err = run([*argv, *(["--resume"] if checkpoint_path(out).exists() else [])])
    assert code == 0, err
    assert not [name for name in os.listdir(tmp_path) if stray.fullmatch(name)], "the leftover temporary stayed"
    for name, data in lookalikes.items():
        assert (tmp_path / name).read_bytes() == data, f"{name} was touched"
    same_weights(straight, out)


def test_a_new_run_removes_its_own_stray_temporaries(tmp_path, medulla) -> None:
    """A simulated leftover of each of the run's two atomic saves (weights and checkpoint), as a
    kill mid-write leaves them, before a new run (not a resume) on the same --out."""
    out = tmp_path / "w.safetensors"
    mine = [tmp_path / f".{name}.{'ab' * 16}.tmp" for name in (out.name, checkpoint_path(out).name)]
    for path in mine:
        path.write_bytes(b"half a safetensors file")
    (tmp_path / "keep.tmp").write_bytes(b"user")
    settings = TrainSettings(steps=1, batch=2, crop=16, points=64, device="cpu", precision="fp32", alpha=4.0)
    train([medulla], settings, out, progress=False)
    assert not any(path.exists() for path in mine) and out.exists()
    assert (tmp_path / "keep.tmp").read_bytes() == b"user"


def test_minutes_resume_continues_the_same_steps_and_the_time_schedule(tmp_path, volume) -> None:
    """What the user guide promises for --minutes (the schedule follows training time, so no run,
    resumed or not, is bit-identical to another): the resume continues at the checkpoint's step
    with its history, its clock continues from the checkpoint's training time (the time between
    the checkpoint and the interrupt is not counted), the run ends once the total training time
    reaches --minutes, and resuming a run whose time is spent trains no further step."""
    budget = 0.15  # minutes: 9 s of training in all
    out = tmp_path / "w.safetensors"
    argv = train_argv(volume, out, "--minutes", f"{budget}", "--checkpoint-every", "100000", steps=1_000_000)
    first = Training(argv)
    counted = re.compile(r"(\d+)/1000000 \[")

    def steps() -> int:
        found = counted.findall(first.text)
        return int(found[-1]) if found else 0

    first.wait_for(lambda: steps() >= 3, "3 steps")
    time.sleep(3)  # train for a few seconds, so a restarted clock could not look like a continued one
    first.proc.send_signal(signal.SIGINT)
    code, err = first.finish()
    assert code == 130 and "Traceback" not in err, err
    state = load_weights(checkpoint_path(out)).train_state
    step, seconds = int(state["step"]), float(state["seconds"])
    assert step >= 3 and 2 < seconds < budget * 60, (step, seconds)
    code, err = run([*argv, "--resume"])
    assert code == 0, err
    history = load_weights(checkpoint_path(out)).train_state["history"]
    assert [h["step"] for h in history] == list(range(1, len(history) + 1)), "steps lost or repeated"
    assert history[step - 1]["seconds"] == pytest.approx(seconds, abs=0.01)
    assert history[step]["seconds"] >= seconds, "the resumed clock restarted from zero"
    times = [h["seconds"] for h in history]
    assert times == sorted(times)
    assert times[-1] >= budget * 60 > times[-2], "the run did not end when its total time reached --minutes"
    card = load_weights(out).card
    assert card["steps"] == len(history) and card["seconds"] == pytest.approx(times[-1], abs=0.1)
    done = load_weights(out).model.state_dict()
    code, err = run([*argv, "--resume"])  # its time is spent: nothing more to train
    assert code == 0 and f"nothing left to train: {out} already holds step {len(history)}" in err, err
    again = load_weights(out).model.state_dict()
    assert all(torch.equal(done[k], again[k]) for k in done)


def test_resume_of_another_run_or_of_nothing_is_refused(tmp_path, volume, straight) -> None:
    out = tmp_path / "w.safetensors"
    shutil.copy(checkpoint_path(straight), checkpoint_path(out))  # a run stopped before its weights
    before = checkpoint_path(out).read_bytes()
    code, err = run(train_argv(volume, out, "--resume", alpha=5))
    refused(code, err, "alpha 4 (this run: 5)")
    code, err = run(train_argv(volume, out, "--resume", "--arch", "v2"))
    refused(code, err, "architecture v1 (this run: v2)", "--overwrite")
    code, err = run(train_argv(volume, out, "--resume", "--region", "0:40,:,:", "--lr", "1e-3"))
    refused(
        code, err, "lr 0.0005 (this run: 0.001)", "training volume shapes [(64, 64, 64)] (this run: [(40, 64, 64)])"
    )
    code, err = run(train_argv(volume, out, "--resume", steps=STEPS + 10))
    refused(code, err, f"steps {STEPS} (this run: {STEPS + 10})")
    assert checkpoint_path(out).read_bytes() == before and not out.exists()
    # without --resume, the unfinished run is not silently replaced
    code, err = run(train_argv(volume, out))
    refused(code, err, "holds an unfinished run", "--resume")
    code, err = run(train_argv(volume, tmp_path / "other.safetensors", "--resume"))
    refused(code, err, "nothing to resume")
    assert not (tmp_path / "other.safetensors").exists()


def test_init_takes_a_registry_name_and_fine_tuning_defaults(tmp_path, volume) -> None:
    out = tmp_path / "ft.safetensors"
    code, err = run(train_argv(volume, out, "--init", DEFAULT_WEIGHTS, steps=2))
    assert code == 0, err
    assert (
        f"fine-tuning {DEFAULT_WEIGHTS}: learning rate 0.0001 (the fine-tuning default; --lr sets another), "
        "warm-up 20 steps" in err
    )
    card = load_weights(out).card
    assert card["fine_tuned_from"] == DEFAULT_WEIGHTS  # the shipped weights, by name
    default_arch = load_weights(resolve_weights(DEFAULT_WEIGHTS)).card["architecture"]
    assert (card["settings"]["lr"], card["settings"]["warmup"], card["architecture"]) == (1e-4, 20, default_arch)
    start = load_weights(resolve_weights(DEFAULT_WEIGHTS)).model.state_dict()
    tuned = load_weights(out).model.state_dict()
    assert start.keys() == tuned.keys() and not all(torch.equal(start[k], tuned[k]) for k in start)
    code, err = run(
        train_argv(volume, tmp_path / "ft2.safetensors", "--init", DEFAULT_WEIGHTS, "--lr", "3e-4", steps=1)
    )
    assert code == 0 and "learning rate 0.0003 (given by --lr)" in err, err
    assert load_weights(tmp_path / "ft2.safetensors").card["settings"]["lr"] == 3e-4
    code, err = run(train_argv(volume, tmp_path / "x.safetensors", "--init", "no-such-weights"))
    refused(code, err, "unknown weights 'no-such-weights'", DEFAULT_WEIGHTS)


def _permissions_stop_root(folder: Path) -> bool:
    probe = folder / "probe"
    try:
        probe.touch()
    except PermissionError:
        return True
    probe.unlink()
    return False


def _in_mount(folder: Path, options: str) -> list[str] | None:
    """A command prefix that runs a command with a fresh tmpfs (``options``) mounted on ``folder``
    in its own user and mount namespace, or None where this machine allows none."""
    prefix = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o {options} none "$0" && exec "$@"', str(folder)]
    if shutil.which("unshare") is None:
        return None
    try:
        res = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if res.returncode == 0 else None


def test_read_only_output_is_refused_before_training(tmp_path, volume) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if _permissions_stop_root(folder):  # not root: the permission bits are what a user meets
            prefix: list[str] | None = []
        else:  # root ignores them: a read-only file system stops root too
            prefix = _in_mount(folder, "ro,size=1m")
        if prefix is None:
            pytest.skip("running as root, and no read-only mount can be made here (unshare -rm)")
        held = tmp_path / "held.tif"  # not the training volume (refused as held out)
        held.write_bytes(volume.read_bytes())
        code, err = run([*prefix, *train_argv(volume, folder / "w.safetensors", "--held-out", str(held))])
    finally:
        folder.chmod(0o755)
    refused(code, err, f"cannot write {folder / 'w.safetensors'}", f"the folder {folder} refuses new files")
    assert list(folder.iterdir()) == []


def test_output_under_a_file_or_on_a_full_disk_is_refused_before_training(tmp_path, volume) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a folder")
    code, err = run(train_argv(volume, blocker / "models" / "w.safetensors"))
    refused(code, err, f"{blocker} is a file, not a folder")
    assert blocker.read_bytes() == b"not a folder"
    full = tmp_path / "small-disk"
    full.mkdir()
    prefix = _in_mount(full, "size=1m")
    if prefix is None:
        pytest.skip("no small tmpfs can be mounted here (unshare -rm) to fill")
    code, err = run([*prefix, *train_argv(volume, full / "w.safetensors")])
    refused(code, err, "MB free; training needs about", "free some space or choose another output path")


def test_bad_held_out_volumes_are_refused_before_training(tmp_path, volume, medulla) -> None:
    write_tif(tmp_path / "flat.tif", medulla[0])
    write_tif(tmp_path / "thin.tif", medulla[:6])
    write_tif(tmp_path / "narrow.tif", medulla[:16, :, :12])
    with_nan = medulla[:16].astype(np.float32)
    with_nan[3, 3, 3] = np.nan
    write_tif(tmp_path / "nan.tif", with_nan)
    cases = {
        "missing.tif": "no such file",
        "flat.tif": "3D",
        "thin.tif": "at least 12 to be scored",
        "narrow.tif": "receptive field",
        "nan.tif": "NaN",
    }
    out = tmp_path / "w.safetensors"
    for name, phrase in cases.items():
        code, err = run(train_argv(volume, out, "--held-out", str(tmp_path / name)))
        refused(code, err, f"--held-out {tmp_path / name}", phrase)
        assert not out.exists() and not checkpoint_path(out).exists()
