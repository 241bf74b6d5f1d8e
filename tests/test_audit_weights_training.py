"""The weights-training audit: weights files that are damaged, lie in their metadata, are PyTorch
pickles whatever their name, or are named with a typo are refused in one line that says what to
do; training and fine-tuning refuse settings they cannot honour before writing anything, refuse a
held-out volume that shares planes with the training data, and record where their weights came from."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_niiv.errors import NiivInputError
from napari_niiv.inference.weights import (
    DEFAULT_WEIGHTS,
    load_weights,
    looks_like_weights,
    recorded_name,
    resolve_weights,
    save_weights,
)
from napari_niiv.model import NiivConfig
from napari_niiv.training.finetune import FineTuneRequest, fine_tune_job
from napari_niiv.training.regions import whole
from napari_niiv.training.train import (
    HeldOutCheck,
    TrainSettings,
    check_held_out_apart,
    checkpoint_path,
    train,
)
from tests.conftest import TINY, random_model, rewrite_weights, write_tif

FAST = dict(alpha=4.0, batch=2, crop=32, points=256, warmup=2, device="cpu", precision="fp32", preview_every=0)


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.safetensors"
    save_weights(path, random_model(TINY), 4.0, None, card={"alpha_range": [2, 8], "architecture": "custom"})
    return path


# --- weights files --------------------------------------------------------------------------------


def test_empty_cut_short_and_absurd_header_files_say_so(good, tmp_path) -> None:
    data = good.read_bytes()
    cases = {
        "empty": (b"", r"not a readable weights file: it is empty \(0 bytes\)"),
        # the header is whole, the tensors are not: safetensors said 'incomplete metadata, file not fully covered'
        "cut": (data[: len(data) - 100], rf"cut short, it needs {len(data)} bytes and holds {len(data) - 100}"),
        "header_cut": (data[:40], r"not a readable weights file: cut short"),
        "absurd": ((10**15).to_bytes(8, "little") + b'{"__metadata__":{}}', r"declares a header of 10{15} bytes"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(NiivInputError, match=message) as info:
            load_weights(path)
        assert "again" in str(info.value) and "\n" not in str(info.value)


def test_a_pytorch_pickle_is_named_as_one_whatever_its_name_and_never_unpickled(tmp_path, monkeypatch) -> None:
    state = random_model(TINY).state_dict()
    for name in ("renamed.safetensors", "model.bin", "upstream.pth"):
        torch.save(state, tmp_path / name)
    torch.save(state, tmp_path / "legacy.safetensors", _use_new_zipfile_serialization=False)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on an untrusted file")

    monkeypatch.setattr(torch, "load", no_unpickling)
    for name in ("renamed.safetensors", "model.bin", "legacy.safetensors"):
        with pytest.raises(NiivInputError, match=r"a PyTorch checkpoint, not napari-niiv weights .*whatever its name"):
            load_weights(tmp_path / name)
    with pytest.raises(NiivInputError, match=r"a PyTorch checkpoint, not napari-niiv weights \(safetensors\);"):
        load_weights(tmp_path / "upstream.pth")
    # `niiv info model.bin` describes it as weights (a PyTorch checkpoint), not as an unknown volume format
    assert looks_like_weights(tmp_path / "model.bin")
    write_tif(tmp_path / "v.tif", np.zeros((2, 4, 4), np.uint8))
    assert not looks_like_weights(tmp_path / "v.tif")


def test_links_that_loop_or_lead_nowhere_and_unreadable_files(good, tmp_path) -> None:
    (tmp_path / "a.safetensors").symlink_to(tmp_path / "b.safetensors")
    (tmp_path / "b.safetensors").symlink_to(tmp_path / "a.safetensors")
    with pytest.raises(NiivInputError, match="a symbolic link that loops"):
        load_weights(tmp_path / "a.safetensors")
    (tmp_path / "gone.safetensors").symlink_to(tmp_path / "deleted.safetensors")
    with pytest.raises(NiivInputError, match=r"a symbolic link to \S+deleted.safetensors, which does not exist"):
        load_weights(tmp_path / "gone.safetensors")
    (tmp_path / "ok link.safetensors").symlink_to(good)  # a name with a space, through a link: fine
    assert load_weights(tmp_path / "ok link.safetensors").alpha == 4.0
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.safetensors"
        locked.write_bytes(good.read_bytes())
        locked.chmod(0)
        with pytest.raises(NiivInputError, match=r"cannot be read \(permission denied\); make it readable"):
            load_weights(locked)


def test_integer_tensors_are_refused_and_other_float_types_load(good, tmp_path) -> None:
    as_int = rewrite_weights(
        good, tmp_path / "int.safetensors", tensors=lambda s: {k: (v * 100).int() for k, v in s.items()}
    )
    with pytest.raises(NiivInputError, match=r"weight tensor\(s\) are not floating point \(e\.g\. \S+: torch\.int32\)"):
        load_weights(as_int)
    reference = load_weights(good).model.state_dict()
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        other = rewrite_weights(
            good, tmp_path / f"{dtype}.safetensors", tensors=lambda s, d=dtype: {k: v.to(d) for k, v in s.items()}
        )
        loaded = load_weights(other).model.state_dict()
        assert all(loaded[k].dtype == torch.float32 for k in loaded)
        assert all(torch.allclose(loaded[k], reference[k], atol=1e-2, rtol=1e-2) for k in loaded)


def test_finite_but_absurd_weights_are_refused(good, tmp_path) -> None:
    """A bias of 1e38 is finite, passed every check, and reconstructed a constant volume."""

    def absurd(state):
        key = next(k for k in state if k.startswith("model.decoder") and k.endswith("0.bias"))
        state[key] = torch.full_like(state[key], 1e38)
        return state

    with pytest.raises(NiivInputError, match="outputs only black or white on a test image"):
        load_weights(rewrite_weights(good, tmp_path / "absurd.safetensors", tensors=absurd))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"alpha": "20"}, r"its alpha 20 lies outside its model card's alpha_range \[2, 8\]"),
        ({"card": json.dumps({"architecture": 2})}, "its model card's architecture 2 is not usable"),
        ({"config": None}, r"its metadata has no architecture description \('config'\)"),
        ({"config": json.dumps({**TINY.to_dict(), "latent_dim": 16.0})}, "latent_dim=16.0 must be a whole number"),
        ({"normalisation": "[1, 2]"}, r"\[1, 2\] is not an object with a low and a high"),
        ({"normalisation": json.dumps({"low": 0})}, "is not an object with a low and a high"),
        ({"normalisation": json.dumps({"low": 3, "high": 3})}, "normalisation metadata is not usable"),
        ({"normalisation": '{"low": NaN, "high": 1}'}, "normalisation metadata is not usable"),
    ],
)
def test_metadata_that_lies_or_is_malformed_is_refused(good, tmp_path, changes, message) -> None:
    with pytest.raises(NiivInputError, match=message):
        load_weights(rewrite_weights(good, tmp_path / "bad.safetensors", **changes))


def test_a_card_architecture_label_that_lies_is_replaced_by_the_real_one(good, tmp_path) -> None:
    """A card saying v2 over a v1 description was shown by `niiv info` and copied into a fine-tune's card."""
    for name in ("v1", "fast"):
        assert NiivConfig.named(name).preset() == name
    assert NiivConfig(latent_dim=3).preset() is None
    assert load_weights(resolve_weights("niiv-em")).card["architecture"] == "v1"  # v1 with an embedding: as written
    card = load_weights(
        rewrite_weights(good, tmp_path / "lie.safetensors", card=json.dumps({"architecture": "v2"}))
    ).card
    assert card["architecture"] == "custom" and card["architecture_as_written"] == "v2"
    fast = tmp_path / "fast.safetensors"
    save_weights(fast, random_model(NiivConfig.fast()), 4.0, None, card={"architecture": "v1"})
    assert load_weights(fast).card["architecture"] == "fast"


def test_misspelled_names_get_a_close_name_and_exact_ones_resolve() -> None:
    for alias in ("niiv-em", "niiv-lm", "niiv-fast", "niiv-v1-fibsem-a8", "niiv-v2-fibsem-a8"):
        assert resolve_weights(alias).stem == alias
    cases = {
        "niiv-emm": r"unknown weights 'niiv-emm' \(did you mean niiv-em",
        "NIIV-EM": r"unknown weights 'NIIV-EM' \(did you mean the weights name niiv-em\?\); available:",
        "niiv_fast": r"did you mean the weights name niiv-fast\?",
        "niiv-ffast": r"\(did you mean niiv-fast\?\)",
        "nothing-like-it": r"unknown weights 'nothing-like-it'; available: niiv-em",
    }
    for given, message in cases.items():
        with pytest.raises(NiivInputError, match=message):
            resolve_weights(given)
    with pytest.raises(NiivInputError, match=r"niiv-em.safetensors: weights file not found; did you mean the weights"):
        load_weights(resolve_weights("niiv-em.safetensors"))


def test_a_path_with_a_typo_gets_the_close_file_in_its_folder(good, tmp_path) -> None:
    with pytest.raises(NiivInputError, match=r"gooood.safetensors: weights file not found; did you mean \S+good"):
        load_weights(tmp_path / "gooood.safetensors")
    with pytest.raises(NiivInputError, match=r"zzz.safetensors: weights file not found; give a weights file or"):
        load_weights(tmp_path / "zzz.safetensors")


def test_a_relative_start_is_recorded_by_its_absolute_path(good, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert recorded_name("good.safetensors") == str(tmp_path / "good.safetensors")
    assert recorded_name(resolve_weights(DEFAULT_WEIGHTS)) == DEFAULT_WEIGHTS
    assert recorded_name("user/some-name") == "user/some-name"


# --- training -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"time_budget": -60.0}, "time limit -60.0 s: give a positive number"),
        ({"time_budget": math.nan}, "time limit nan s"),
        ({"time_budget": 0.0}, "time limit 0.0 s"),
        ({"steps": 0}, "steps 0: give a whole number of at least 1"),
        ({"steps": 2.5}, "steps 2.5"),
        ({"checkpoint_every": 0}, "checkpoint_every 0"),
        ({"eval_every": 0}, "eval_every 0"),
        ({"lr": math.nan}, "learning rate nan"),
        ({"alpha": 1.0}, "alpha 1 simulates no anisotropy"),
        ({"alpha": 8.0, "alpha_max": 2.0}, "alpha_max 2 is below alpha 8"),
        ({"alpha": -2.0}, "alpha must be a number from 1"),
    ],
)
def test_train_refuses_settings_it_cannot_honour_before_writing(tmp_path, medulla, changes, message) -> None:
    """A negative time limit trained 0 steps and wrote the start weights back as a result; a NaN one
    was no limit at all; steps 0 or an interval of 0 failed mid-run."""
    out = tmp_path / "w.safetensors"
    settings = TrainSettings(**{**FAST, "architecture": "fast", "steps": 3, **changes})
    with pytest.raises(NiivInputError, match=message):
        train([medulla], settings, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_alpha_1_as_the_low_end_of_a_range_still_trains(tmp_path, medulla) -> None:
    settings = TrainSettings(**{**FAST, "alpha": 1.0, "alpha_max": 4.0, "architecture": "fast", "steps": 1})
    assert train([medulla], settings, tmp_path / "w.safetensors", progress=False).steps_done == 1


def test_a_held_out_volume_sharing_training_planes_is_refused(tmp_path, medulla) -> None:
    """The same data saved twice (as float), or overlapping z crops of one volume, scored 'held out'."""
    from napari_niiv.data.io import as_volume

    training = [as_volume(medulla[:40])]
    same_as_float = HeldOutCheck([medulla[:40].astype(np.float32)], 4.0)
    with pytest.raises(NiivInputError, match=r"the held-out volume shares 40 xy plane\(s\) with the training volume"):
        check_held_out_apart(same_as_float, training, None)
    overlapping = HeldOutCheck([medulla[30:]], 4.0)
    with pytest.raises(NiivInputError, match=r"shares 10 xy plane\(s\) .* its plane 0 is plane 30 there"):
        check_held_out_apart(overlapping, training, None)
    check_held_out_apart(overlapping, training, [(0, 30)])  # the run trains on planes 0-29 only: apart
    check_held_out_apart(HeldOutCheck([medulla[40:]], 4.0), training, None)
    padded = medulla[40:].copy()
    padded[0] = 0  # a blank plane in both is no overlap
    blank = medulla[:40].copy()
    blank[5] = 0
    check_held_out_apart(HeldOutCheck([padded], 4.0), [as_volume(blank)], None)
    # and train() makes the check before anything is written
    settings = TrainSettings(**{**FAST, "architecture": "fast", "steps": 1})
    with pytest.raises(NiivInputError, match="would not be held out"):
        train([medulla[:40]], settings, tmp_path / "w.safetensors", held_out=overlapping, progress=False)
    assert not (tmp_path / "w.safetensors").exists()


def test_a_teacher_that_never_learned_the_sections_is_refused(tmp_path, medulla) -> None:
    settings = TrainSettings(**{**FAST, "architecture": "fast", "steps": 1, "teacher": "niiv-lm"})
    with pytest.raises(NiivInputError, match="the teacher niiv-lm learned psf sections, not thick"):
        train([medulla], settings, tmp_path / "w.safetensors", progress=False)
    assert not (tmp_path / "w.safetensors").exists()


def test_cards_record_which_files_a_run_started_and_learned_from(tmp_path, medulla) -> None:
    import hashlib

    start = tmp_path / "start.safetensors"
    save_weights(start, random_model(NiivConfig.fast()), 4.0, None, card={"architecture": "fast"})
    settings = TrainSettings(**{**FAST, "steps": 1, "teacher": str(start)})
    result = train([medulla], settings, tmp_path / "w.safetensors", init=start, progress=False)
    card = load_weights(result.weights).card
    digest = hashlib.sha256(start.read_bytes()).hexdigest()
    assert card["fine_tuned_from"] == card["distilled_from"] == str(start)
    assert card["fine_tuned_from_sha256"] == card["distilled_from_sha256"] == digest
    assert result.started_at == 0 and result.steps_done == 1
    # resuming a complete run trains nothing: the result says so (started_at == steps_done)
    again = train([medulla], settings, tmp_path / "w.safetensors", init=start, resume=True, progress=False)
    assert again.started_at == again.steps_done == 1
    assert load_weights(again.weights).card["fine_tuned_from_sha256"] == digest


def test_a_run_without_progress_prints_nothing(tmp_path, medulla, capsys) -> None:
    """tqdm.write printed each held-out check even with the bar off: a viewer's fine-tune filled the terminal."""
    held = HeldOutCheck([medulla[48:, :32, :32]], 4.0)
    settings = TrainSettings(**{**FAST, "architecture": "fast", "steps": 2, "eval_every": 1})
    train([medulla[:40]], settings, tmp_path / "w.safetensors", held_out=held, progress=False)
    captured = capsys.readouterr()
    assert "held-out" not in captured.out + captured.err


def test_sigterm_stops_a_run_with_a_checkpoint_it_resumes_from(tmp_path, medulla) -> None:
    """kill, timeout and batch schedulers send SIGTERM: it ended a run at once, losing every step
    since the last checkpoint (here all of them)."""
    volume, out = tmp_path / "v.tif", tmp_path / "w.safetensors"
    write_tif(volume, medulla)
    argv = [str(volume), "--out", str(out), "--alpha", "4", "--arch", "fast", "--crop", "32", "--batch", "2"]
    argv += ["--steps", "100000", "--checkpoint-every", "1000000", "--device", "cpu"]
    command = [sys.executable, "-c", "import sys; from napari_niiv.cli import main; sys.exit(main())", "train"]
    proc = subprocess.Popen([*command, *argv], stderr=subprocess.PIPE)
    seen, deadline = b"", time.monotonic() + 180
    os.set_blocking(proc.stderr.fileno(), False)
    while b"loss=" not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stderr.read() or b""
        time.sleep(0.2)
    assert b"loss=" in seen, seen.decode(errors="replace")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    os.set_blocking(proc.stderr.fileno(), True)
    err = (seen + proc.stderr.read()).decode(errors="replace")
    assert proc.returncode == 143, err  # 128 + SIGTERM, as the shell reports a terminated command
    assert "terminated (SIGTERM): stopping after this step to save a checkpoint" in err
    step = load_weights(checkpoint_path(out)).train_state["step"]
    assert f"niiv train: terminated; step {step} of 100000 saved in" in err and step >= 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --- fine-tuning from the Python API --------------------------------------------------------------


def _request(data, out, **changes) -> FineTuneRequest:
    values = dict(
        data=data,
        scale=(40.0, 10.0, 10.0),
        name="medulla",
        source="medulla.tif",
        alpha=4.0,
        start_weights="niiv-fast",
        regions=(whole(data.shape),),
        out=out,
        steps=3,
        minutes=0,
        device="cpu",
    )
    return FineTuneRequest(**{**values, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"minutes": -1}, "time limit -1 min: give a number of minutes, or 0 for no time limit"),
        ({"minutes": math.nan}, "time limit nan min"),
        ({"steps": 2.5}, "steps 2.5: give a whole number of steps"),
        ({"alpha": 1.0}, "has alpha 1: it is already isotropic"),
        ({"out_name": "noext"}, "weights are written as .safetensors"),
        ({"scale": (0, 0, 0)}, r"voxel size \(0, 0, 0\) needs three numbers"),
        ({"as_type": bool}, "has pixel type bool; fine-tuning needs an integer or floating-point volume"),
        ({"as_type": np.complex64}, "has pixel type complex64"),
    ],
)
def test_fine_tune_job_refuses_before_anything_runs(tmp_path, medulla, changes, message) -> None:
    changes = dict(changes)
    out = tmp_path / changes.pop("out_name", "ft.safetensors")
    data = medulla.astype(changes.pop("as_type")) if "as_type" in changes else medulla
    with pytest.raises(NiivInputError, match=message):
        fine_tune_job(_request(data, out, **changes))
    assert list(tmp_path.iterdir()) == []


def test_a_region_past_the_edge_is_clipped_before_planes_are_held_out(tmp_path, medulla) -> None:
    """A region past the volume's edge held out planes of its unclipped size; the run then failed on
    its thread scoring a held-out part of '0 z planes'."""
    job = fine_tune_job(
        _request(medulla, tmp_path / "ft.safetensors", regions=((slice(0, 64), slice(0, 200), slice(0, 64)),))
    )
    assert job.split.held_out[1] == slice(0, 64) and job.card["regions"] == [[[0, 64], [0, 64], [0, 64]]]
    with pytest.raises(NiivInputError, match=r"no region is at least 64x64 px"):
        fine_tune_job(
            _request(medulla, tmp_path / "ft.safetensors", regions=((slice(0, 64), slice(100, 200), slice(0, 64)),))
        )


def test_fine_tuned_weights_reload_and_say_what_they_came_from(tmp_path, medulla, monkeypatch) -> None:
    import hashlib

    monkeypatch.chdir(tmp_path)
    start = Path("start.safetensors")  # relative: recorded by its absolute path
    save_weights(start, random_model(NiivConfig.fast()), 4.0, None, card={"architecture": "fast"})
    job = fine_tune_job(_request(medulla, tmp_path / "ft.safetensors", start_weights=str(start)))
    job.start()
    assert job.join(timeout=300) and job.ended == "complete", job.ended
    w = load_weights(tmp_path / "ft.safetensors")
    assert w.model.config == NiivConfig.fast() and w.alpha == 4.0 and w.alpha_range == (4.0, 4.0)
    card = w.card
    assert card["started_from"] == card["fine_tuned_from"] == str(tmp_path / "start.safetensors")
    assert card["fine_tuned_from_sha256"] == hashlib.sha256((tmp_path / "start.safetensors").read_bytes()).hexdigest()
    assert card["steps"] == 3 and card["degradations"] == ["thick"] and card["source"] == "medulla.tif"
    assert card["runs"] == [{"steps": [0, 3], "ended": "complete"}]
    assert "started from: " + str(tmp_path / "start.safetensors") in (tmp_path / "ft.md").read_text()


def _damaged_checkpoint(tmp_path, medulla, name, tensors=None, **meta_changes):
    """A time-limited run's checkpoint (unfinished), then edited as ``name``; its settings."""
    settings = TrainSettings(**{**FAST, "architecture": "fast", "steps": 100, "checkpoint_every": 1})
    first = tmp_path / "first.safetensors"
    if not checkpoint_path(first).exists():
        train(
            [medulla],
            TrainSettings(**{**FAST, "architecture": "fast", "steps": 100, "checkpoint_every": 1, "time_budget": 1e-3}),
            first,
            progress=False,
        )
    out = tmp_path / name / "w.safetensors"
    out.parent.mkdir()
    rewrite_weights(checkpoint_path(first), checkpoint_path(out), tensors=tensors, **meta_changes)
    return settings, out


def _first_optim(state, suffix="exp_avg"):
    return next(k for k in state if k.startswith("optim.") and k.endswith(suffix))


def _nan_moment(state):
    key = _first_optim(state)
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    return state


def _train_state(**changes):
    return json.dumps({"step": 1, "history": [], "seconds": 0.5, **changes})


@pytest.mark.parametrize(
    ("case", "edit", "message"),
    [
        ("nan_moment", {"tensors": _nan_moment}, r"optim.0.exp_avg holds NaN or infinite values"),
        ("reshaped", {"tensors": lambda s: {**s, _first_optim(s): torch.zeros(7)}}, r"optim.0.exp_avg is \(7,\)"),
        ("missing", {"tensors": lambda s: {k: v for k, v in s.items() if k != _first_optim(s)}}, "lacks exp_avg"),
        ("misnamed", {"tensors": lambda s: {**s, "optim.x.exp_avg": torch.zeros(3)}}, "a tensor named 'optim.x"),
        ("step_text", {"train_state": _train_state(step="x")}, r"training state is damaged \(step 'x' of 100"),
        ("step_negative", {"train_state": _train_state(step=-5)}, r"step -5 of 100"),
        ("seconds_nan", {"train_state": _train_state(seconds=math.nan)}, r"nan s\)"),
    ],
)
def test_a_damaged_checkpoint_is_refused_on_resume_with_what_to_do(tmp_path, medulla, case, edit, message) -> None:
    """NaN in Adam's moments said 'training diverged: lower the learning rate'; the others were tracebacks."""
    settings, out = _damaged_checkpoint(tmp_path, medulla, case, **edit)
    with pytest.raises(NiivInputError, match=message) as info:
        train([medulla], settings, out, resume=True, progress=False)
    assert "start a new run" in str(info.value) and not out.exists()
