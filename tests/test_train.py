import re
import signal
import threading
from dataclasses import replace

import dask.array as da
import numpy as np
import pytest
import torch

from napari_niiv.data import LateralPairSampler, Volume, open_volume
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.weights import DEFAULT_WEIGHTS, available_weights, load_weights, resolve_weights, shipped_dir
from napari_niiv.model import NiivConfig, NiivModel
from napari_niiv.training.finetune import FineTuneRequest, fine_tune_job, weights_name
from napari_niiv.training.regions import volume_region, whole
from napari_niiv.training.train import (
    HeldOutCheck,
    TrainCallback,
    TrainingInterrupted,
    TrainResult,
    TrainSettings,
    check_output,
    checkpoint_path,
    held_out_min_planes,
    train,
)
from tests.conftest import data_path

# v2, the smaller encoder (6 blocks against v1's 16), for speed: these test the training, not the default model
TINY = dict(
    alpha=4.0,
    batch=4,
    crop=32,
    points=512,
    warmup=5,
    device="cpu",
    precision="fp32",
    preview_every=2,
    architecture="v2",
)
FAST = {**TINY, "batch": 2, "points": 64}  # runs whose losses do not matter


class Recorder(TrainCallback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.steps: list[tuple[int, float]] = []
        self.evals: list[dict] = []
        self.previews: list[int] = []
        self.checkpoints: list[int] = []
        self.stop_at = stop_at

    def on_step(self, step, loss, lr):
        self.steps.append((step, loss))

    def on_eval(self, step, metrics):
        self.evals.append(metrics)

    def on_preview(self, step, model):
        self.previews.append(step)

    def on_checkpoint(self, step, path):
        self.checkpoints.append(step)

    def should_stop(self):
        return self.stop_at is not None and len(self.steps) >= self.stop_at


def _l1(model, batch) -> float:
    with torch.no_grad():
        return float((model(batch.inputs, batch.coords, 4.0) - batch.targets).abs().mean())


@pytest.mark.slow  # trains 80 steps
def test_training_lowers_the_loss_on_real_data(tmp_path, medulla) -> None:
    vol = Volume(da.from_array(medulla))
    fixed = LateralPairSampler([vol], 4.0, 32, 2048).batch(seed=999, step=0, size=16)
    settings = TrainSettings(steps=80, lr=1e-3, **TINY)
    rec = Recorder()
    result = train([vol], settings, tmp_path / "w.safetensors", progress=False, callbacks=[rec])
    start = load_weights(result.weights).model
    untrained = NiivModel()  # the starting point: bilinear interpolation
    assert _l1(start, fixed) < 0.97 * _l1(untrained, fixed)
    assert len(rec.steps) == 80 and rec.previews[:2] == [2, 4]
    first, last = np.mean([loss for _, loss in rec.steps[:10]]), np.mean([loss for _, loss in rec.steps[-10:]])
    assert last < first


def test_stop_then_resume_equals_an_uninterrupted_run(tmp_path, medulla) -> None:
    vol = Volume(da.from_array(medulla))
    settings = TrainSettings(steps=6, checkpoint_every=100, seed=3, **TINY)
    straight = train([vol], settings, tmp_path / "a.safetensors", progress=False)

    rec = Recorder(stop_at=3)
    stopped = train([vol], settings, tmp_path / "b.safetensors", progress=False, callbacks=[rec])
    assert stopped.stopped_early and stopped.steps_done == 3 and rec.checkpoints == [3]
    assert checkpoint_path(tmp_path / "b.safetensors").exists()
    resumed = train([vol], settings, tmp_path / "b.safetensors", resume=True, progress=False)
    assert resumed.steps_done == 6 and not resumed.stopped_early

    a, b = load_weights(straight.weights).model.state_dict(), load_weights(resumed.weights).model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    assert len(resumed.history) == 6


def test_held_out_check_and_card(tmp_path, medulla) -> None:
    vol = Volume(da.from_array(medulla[:, :, :]))
    held = HeldOutCheck([medulla[:16, :32, :32]], 4.0)
    rec = Recorder()
    settings = TrainSettings(steps=4, eval_every=2, **TINY)
    result = train([vol], settings, tmp_path / "w.safetensors", progress=False, held_out=held, callbacks=[rec])
    assert len(rec.evals) == 2
    assert {"cf_psnr", "psnr", "ssim", "cf_psnr_gain", "psnr_gain"} <= set(rec.evals[-1])
    card = load_weights(result.weights).card
    assert card["steps"] == 4 and card["held_out"]["cf_psnr"] == pytest.approx(rec.evals[-1]["cf_psnr"])
    assert card["alpha"] == 4.0 and card["data"] == ["volume"]


def test_learning_rate_schedule() -> None:
    s = TrainSettings(lr=1e-3, steps=1000, warmup=100, final_lr_fraction=0.1)
    assert s.lr_at(0) == pytest.approx(1e-5)
    assert s.lr_at(100) == pytest.approx(1e-3)
    assert s.lr_at(1000) == pytest.approx(1e-4)
    timed = TrainSettings(lr=1e-3, steps=10**9, warmup=0, time_budget=60.0, final_lr_fraction=0.1)
    assert timed.lr_at(10, elapsed=60.0) == pytest.approx(1e-4)


@pytest.fixture(scope="module")
def cremi() -> np.ndarray:
    """Real serial-section TEM, alpha 10: (32, 96, 96) uint8."""
    return np.asarray(open_volume(data_path("anisotropic_em", "cremi_a.tif")).data[:, :96, :96])


@pytest.fixture
def user_weights(tmp_path, monkeypatch):
    folder = tmp_path / "user-weights"
    monkeypatch.setenv("NIIV_WEIGHTS_DIR", str(folder))
    return folder


def request(cremi, out, **changes) -> FineTuneRequest:
    values = dict(
        data=cremi,
        scale=(40.0, 4.0, 4.0),
        name="cremi",
        source="/data/cremi_a.tif",
        alpha=10.0,
        start_weights=DEFAULT_WEIGHTS,
        regions=(whole(cremi.shape),),
        out=out,
        steps=6,
        minutes=0,
        device="cpu",
    )
    return FineTuneRequest(**{**values, **changes})


def test_fine_tune_job_holds_planes_out_and_describes_itself(cremi, user_weights) -> None:
    job = fine_tune_job(request(cremi, user_weights / "cremi.safetensors"))
    assert job.settings.alpha == 10.0 and job.settings.crop == 64 and job.settings.steps == 6
    assert job.settings.lr == 1e-4 and job.settings.time_budget is None and job.settings.device == "cpu"
    assert job.split.held_out[0] == slice(26, 32) and job.split.z_ranges == [(0, 26)]
    assert job.init == resolve_weights(DEFAULT_WEIGHTS) and not job.resume
    (vol,) = job.volumes
    assert vol.shape == (32, 96, 96) and vol.voxel_size == (40.0, 4.0, 4.0) and vol.name == "cremi"
    # the held-out check scores the held-out xy planes only, pooled in-plane
    assert not isinstance(job._held_out, HeldOutCheck)  # read and scored on the training thread, not the caller's
    held_out = job.held_out()
    assert [v.shape for v in held_out.volumes] == [(96, 6, 96)]
    np.testing.assert_array_equal(held_out.volumes[0][:, 0], cremi[26])
    assert job.card == {
        "source_layer": "cremi",
        "source": "/data/cremi_a.tif",
        "regions": [[[0, 32], [0, 96], [0, 96]]],
        "held_out_planes": [26, 32],
        "started_from": DEFAULT_WEIGHTS,
    }
    # a layer in memory is read where it is, neither copied (a second volume) nor hashed by dask
    mine = cremi.copy()
    job = fine_tune_job(request(mine, user_weights / "cremi.safetensors"))
    mine[0, 0, 0] = 255 - mine[0, 0, 0]
    assert job.volumes[0].data[0, 0, 0].compute() == mine[0, 0, 0]
    small = fine_tune_job(request(cremi, user_weights / "c.safetensors", data=da.from_array(cremi)[:, :50, :50]))
    assert small.settings.crop == 50  # a small volume trains on its whole width
    # alpha above 32 needs crops of two sections (the panel has no crop control: it was refused mid-run)
    assert fine_tune_job(request(cremi, user_weights / "w.safetensors", alpha=40.0)).settings.crop == 80
    with pytest.raises(NiivInputError, match="needs at least 80x80"):
        fine_tune_job(request(cremi[:, :64, :64], user_weights / "w.safetensors", alpha=40.0))


def test_boxes_narrower_than_the_crop_train_as_a_volume_that_narrow_does(cremi, user_weights) -> None:
    """A 50 px box on a 96 px volume was refused ('no region is at least 64x64 px'), while a 50 px
    volume of its own trains on 50 px crops (the fine-tuning panel audit)."""
    box = (slice(0, 32), slice(10, 60), slice(20, 70))
    job = fine_tune_job(request(cremi, user_weights / "box.safetensors", regions=(box,)))
    assert job.settings.crop == 50
    assert job.split.regions and all(r[1:] == box[1:] for r in job.split.regions)
    part = cremi[:, 10:60, 20:70]
    alone = fine_tune_job(request(part, user_weights / "alone.safetensors", regions=(whole(part.shape),)))
    assert alone.settings.crop == 50


def test_fine_tune_job_refuses_what_it_cannot_do(cremi, user_weights) -> None:
    out = user_weights / "cremi.safetensors"
    with pytest.raises(NiivInputError, match="never overwritten"):
        fine_tune_job(request(cremi, shipped_dir() / "mine.safetensors"))
    with pytest.raises(NiivInputError, match="learning rate"):
        fine_tune_job(request(cremi, out, lr=0.5))
    with pytest.raises(NiivInputError, match="unknown weights"):
        fine_tune_job(request(cremi, out, start_weights="no-such-weights"))
    # a 20 px box trains on 20 px crops (as a volume that narrow does), but its held-out part is
    # narrower than the start weights' receptive field
    with pytest.raises(
        NiivInputError, match=r"20 px wide in x, .* need at least 35 .*: learn from a wider volume or box"
    ):
        fine_tune_job(request(cremi, out, regions=((slice(0, 32), slice(0, 20), slice(0, 20)),)))
    with pytest.raises(NiivInputError, match=r"widest region to learn from in 'cremi' is 15 px .* draw larger boxes"):
        fine_tune_job(request(cremi, out, regions=((slice(0, 32), slice(0, 15), slice(0, 15)),)))
    out.parent.mkdir(parents=True)
    out.write_bytes(b"")
    with pytest.raises(NiivInputError, match="already exist"):
        fine_tune_job(request(cremi, out))
    with pytest.raises(NiivInputError, match="no unfinished run to resume"):
        fine_tune_job(request(cremi, out, resume=True))
    checkpoint_path(out).write_bytes(b"")
    assert fine_tune_job(request(cremi, out, resume=True)).resume
    # an unfinished run (its checkpoint alone, as a crash leaves it) is not replaced by a new one
    out.unlink()
    with pytest.raises(NiivInputError, match=r"holds an unfinished run .* Resume it"):
        fine_tune_job(request(cremi, out))
    assert checkpoint_path(out).exists()
    assert "user/cremi.ckpt" not in available_weights()  # a checkpoint is not weights to pick (niiv info, widget)
    assert weights_name(" cremi a/10 ") == "cremi-a-10"
    with pytest.raises(NiivInputError, match="name"):
        weights_name(" // ")
    # a name ending in .ckpt is a run's checkpoint: hidden from the weights lists, then replaced
    with pytest.raises(NiivInputError, match="checkpoints"):
        weights_name("cremi.ckpt")


@pytest.mark.slow
def test_fine_tune_job_runs_on_its_thread_stops_resumes_and_writes_the_card(cremi, user_weights) -> None:
    out = user_weights / "cremi.safetensors"
    events: list[tuple] = []
    threads: set[str] = set()

    def listen(job):
        def on_step(step, loss):
            threads.add(threading.current_thread().name)
            events.append(("step", step))
            if step == 3:
                job.stop()

        job.on_step = on_step
        job.on_check = lambda step, metrics: events.append(("check", step, metrics["cf_psnr_gain"]))
        job.on_finished = lambda result: events.append(("finished", result))
        return job

    job = listen(fine_tune_job(request(cremi, out)))
    job.start()
    assert job.join(300) and not job.running
    assert threads == {"niiv-train"}
    assert events[0][:2] == ("check", 0), "the start weights were not scored first"
    assert [e[1] for e in events if e[0] == "step"] == [1, 2, 3]
    kind, result = events[-1]
    assert kind == "finished" and result is job.result and isinstance(result, TrainResult), result
    assert result.stopped_early and result.steps_done == 3 and checkpoint_path(out).exists()
    card = (user_weights / "cremi.md").read_text()
    assert "steps: 3 (stopped by the user)" in card and "held-out xy planes: CF-PSNR" in card

    events.clear()
    job = listen(fine_tune_job(request(cremi, out, resume=True)))
    job.start()
    assert job.join(300)
    assert [e[1] for e in events if e[0] == "step"] == [4, 5, 6]
    assert not any(e[0] == "check" and e[1] == 0 for e in events), "a resumed run re-scored the start weights"
    assert events[-1][1].steps_done == 6 and not events[-1][1].stopped_early
    meta = load_weights(out).card
    assert meta["source_layer"] == "cremi" and meta["held_out_planes"] == [26, 32] and meta["steps"] == 6
    assert "steps: 6 (complete)" in (user_weights / "cremi.md").read_text()


def test_a_failing_run_reports_its_exception(cremi, user_weights) -> None:
    job = fine_tune_job(request(cremi, user_weights / "failing.safetensors"))
    job.init = user_weights / "missing.safetensors"  # the start weights vanished after the check
    results = []
    job.on_finished = results.append
    job.start()
    assert job.join(60)
    assert len(results) == 1 and isinstance(results[0], BaseException) and results[0] is job.result
    assert not (user_weights / "failing.md").exists()


# -- faults and refusals (the Python API; tests/test_train_faults.py runs the CLI in processes) ----


class RaiseSigint(TrainCallback):
    """Sends this process real SIGINTs (Ctrl-C) after step ``at``."""

    def __init__(self, at: int, times: int = 1) -> None:
        self.at, self.times = at, times

    def on_step(self, step, loss, lr):
        if step == self.at:
            for _ in range(self.times):
                signal.raise_signal(signal.SIGINT)


def test_ctrl_c_saves_a_checkpoint_and_resume_equals_an_uninterrupted_run(tmp_path, medulla) -> None:
    vol = Volume(da.from_array(medulla))
    settings = TrainSettings(steps=4, checkpoint_every=100, seed=5, **FAST)
    straight = train([vol], settings, tmp_path / "a.safetensors", progress=False)
    out = tmp_path / "b.safetensors"
    with pytest.raises(TrainingInterrupted) as info:
        train([vol], settings, out, progress=False, callbacks=[RaiseSigint(at=2)])
    assert (info.value.step, info.value.steps, info.value.saved_now) == (2, 4, True)
    assert info.value.checkpoint == checkpoint_path(out) and not out.exists()
    assert load_weights(checkpoint_path(out)).train_state["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the SIGINT handler was not restored"
    resumed = train([vol], settings, out, resume=True, progress=False)
    assert resumed.steps_done == 4 and [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    a, b = load_weights(straight.weights).model.state_dict(), load_weights(resumed.weights).model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, medulla) -> None:
    vol = Volume(da.from_array(medulla))
    settings = TrainSettings(steps=6, checkpoint_every=2, **FAST)
    out = tmp_path / "w.safetensors"
    with pytest.raises(TrainingInterrupted) as info:
        train([vol], settings, out, progress=False, callbacks=[RaiseSigint(at=3, times=2)])
    assert (info.value.step, info.value.saved_now, info.value.checkpoint) == (2, False, checkpoint_path(out))
    assert load_weights(checkpoint_path(out)).train_state["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_refuses_nothing_to_resume_and_another_run(tmp_path, medulla) -> None:
    vol = Volume(da.from_array(medulla))
    settings = TrainSettings(steps=2, checkpoint_every=1, **FAST)
    out = tmp_path / "w.safetensors"
    with pytest.raises(NiivInputError, match="nothing to resume"):
        train([vol], settings, out, resume=True, progress=False)
    assert not out.exists() and not checkpoint_path(out).exists()
    train([vol], settings, out, progress=False)
    before = checkpoint_path(out).read_bytes()
    cases = {
        "alpha 4 (this run: 5)": ([vol], replace(settings, alpha=5.0)),
        "architecture v2 (this run: v1)": ([vol], replace(settings, architecture="v1")),
        "lr 0.0005 (this run: 0.001)": ([vol], replace(settings, lr=1e-3)),
        "seed 0 (this run: 1)": ([vol], replace(settings, seed=1)),
        "steps 2 (this run: 3)": ([vol], replace(settings, steps=3)),
        "shapes [(64, 64, 64)] (this run: [(40, 64, 64)])": ([Volume(da.from_array(medulla[:40]))], settings),
        "same shapes, but other content": ([Volume(da.from_array(medulla[::-1].copy()))], settings),
    }
    for named, (vols, changed) in cases.items():
        with pytest.raises(NiivInputError, match=re.escape(named)):
            train(vols, changed, out, resume=True, progress=False)
    several = replace(settings, alpha=5.0, batch=3)
    with pytest.raises(NiivInputError, match=r"alpha 4 \(this run: 5\); batch 2 \(this run: 3\)"):
        train([vol], several, out, resume=True, progress=False)
    assert checkpoint_path(out).read_bytes() == before, "a refused resume touched the checkpoint"
    # what may change: device, precision, time budget, reporting intervals
    again = replace(settings, checkpoint_every=50, preview_every=1, time_budget=600.0)
    assert train([vol], again, out, resume=True, progress=False).steps_done == 2


def test_a_resumed_fine_tuning_keeps_its_start_weights_in_the_card(tmp_path, medulla) -> None:
    vol = Volume(da.from_array(medulla))
    start = resolve_weights(DEFAULT_WEIGHTS)
    settings = TrainSettings(steps=4, **FAST)
    out = tmp_path / "w.safetensors"
    train([vol], settings, out, init=start, progress=False, callbacks=[Recorder(stop_at=2)])
    train([vol], settings, out, init=out, resume=True, progress=False)  # the panel resumes from its own weights
    assert load_weights(out).card["fine_tuned_from"] == DEFAULT_WEIGHTS  # shipped: by name, not this machine's path


def test_output_checked_before_any_work(tmp_path, medulla) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    with pytest.raises(NiivInputError, match="is a file, not a folder"):
        check_output(blocker / "sub" / "w.safetensors")
    with pytest.raises(NiivInputError, match="is a folder"):
        check_output(tmp_path)
    check_output(tmp_path / "new" / "deeper" / "w.safetensors")
    assert not (tmp_path / "new").exists(), "the check created folders"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"], "the probe file was left behind"
    settings = TrainSettings(steps=2, **FAST)
    with pytest.raises(NiivInputError, match="not a folder"):
        train([Volume(da.from_array(medulla))], settings, blocker / "w.safetensors", progress=False)


def test_held_out_volumes_checked_before_training(medulla) -> None:
    bad = {
        "2D": medulla[0],
        "z plane": medulla[:8],  # pooled by 4: 2 rows, 8 planes, less than the SSIM window
        "px along x": medulla[:16, :, :8],
        "NaN": np.where(medulla[:16] > 100, np.nan, medulla[:16].astype(np.float32)),
        "constant": np.zeros((16, 32, 32), np.float32),
    }
    for named, vol in bad.items():
        with pytest.raises(NiivInputError, match=named):
            HeldOutCheck([vol], 4.0)
    assert held_out_min_planes(4.0) == 12 and held_out_min_planes(8.0) == 16 and held_out_min_planes(1.5) == 12
    HeldOutCheck([medulla[:12, :32, :32]], 4.0)  # the smallest that can be scored
    narrow = HeldOutCheck([medulla[:16, :32, :12]], 4.0)
    with pytest.raises(NiivInputError, match="receptive field"):
        narrow.check_fits(NiivConfig())


def test_volume_region_crops_and_places(medulla) -> None:
    vol = Volume(da.from_array(medulla), voxel_size=(2.0, 1.0, 0.5), translation=(10.0, 0.0, 0.0))
    part = volume_region(vol, (slice(4, 20), slice(None), slice(8, None)))
    assert part.shape == (16, 64, 56) and part.translation == (18.0, 0.0, 4.0) and part.voxel_size == vol.voxel_size
    np.testing.assert_array_equal(np.asarray(part.data), medulla[4:20, :, 8:])
    with pytest.raises(NiivInputError, match="not inside"):
        volume_region(vol, (slice(0, 65), slice(None), slice(None)))


@pytest.mark.slow  # trains 60 steps
def test_distillation_learns_the_teachers_outputs_and_is_part_of_the_run(tmp_path, medulla) -> None:
    """With a teacher, the targets are its outputs on the same crops: the student comes closer to
    the teacher than to the true planes it never saw; the card names the teacher, and a resume
    with another teacher is refused (another run)."""
    from napari_niiv.inference.weights import save_weights
    from tests.conftest import random_model

    vol = Volume(da.from_array(medulla))
    small = NiivConfig(latent_dim=16, encoder_blocks=1, mlp_hidden=32, mlp_layers=2)
    teacher_model = random_model(small, seed=5)
    torch.nn.init.normal_(teacher_model.decoder.net[-1].weight, std=0.5)  # far from the truth on purpose
    teacher = tmp_path / "teacher.safetensors"
    save_weights(teacher, teacher_model, 4.0, None)
    fixed = LateralPairSampler([vol], 4.0, 32, 2048).batch(seed=999, step=0, size=8)
    with torch.no_grad():
        taught = teacher_model(fixed.inputs, fixed.coords, 4.0)
    settings = TrainSettings(steps=60, lr=2e-3, teacher=str(teacher), **{**TINY, "architecture": "fast"})
    out = tmp_path / "student.safetensors"
    result = train([vol], settings, out, progress=False)
    student = load_weights(result.weights)
    with torch.no_grad():
        pred = student.model(fixed.inputs, fixed.coords, 4.0)
    to_teacher, to_truth = float((pred - taught).abs().mean()), float((pred - fixed.targets).abs().mean())
    with torch.no_grad():
        untrained = float((NiivModel(NiivConfig.fast())(fixed.inputs, fixed.coords, 4.0) - taught).abs().mean())
    assert to_teacher < 0.8 * untrained and to_teacher < to_truth
    assert student.card["distilled_from"] == str(teacher) and student.model.config == NiivConfig.fast()

    other = tmp_path / "other.safetensors"
    save_weights(other, random_model(small), 4.0, None)
    out.unlink()  # keep the run's checkpoint: resume it with another teacher
    with pytest.raises(NiivInputError, match="teacher"):
        train([vol], replace(settings, teacher=str(other)), out, resume=True, progress=False)


def test_acquisition_embedding_from_scratch_or_added_to_init_weights_and_trained(tmp_path, medulla) -> None:
    """``acquisition_embedding`` builds a told model from scratch, adds the embedding (at zero) to
    start weights that lack it, trains it (its vectors leave zero), and is part of the run: a resume
    without it is refused."""
    from napari_niiv.inference.weights import save_weights
    from tests.conftest import random_model

    vol = Volume(da.from_array(medulla))
    settings = TrainSettings(
        steps=3,
        alpha_max=8.0,
        degradations="thick,thin",
        acquisition_embedding=True,
        **{**FAST, "architecture": "fast"},
    )
    scratch = load_weights(train([vol], settings, tmp_path / "a.safetensors", progress=False).weights).model
    assert scratch.config == replace(NiivConfig.fast(), acquisition_embedding=True)
    assert float(scratch.encoder.acquisition.alpha.detach().abs().sum()) > 0, "the embedding was not trained"

    small = NiivConfig(latent_dim=16, encoder_blocks=1, mlp_hidden=32, mlp_layers=2)
    init = tmp_path / "init.safetensors"
    save_weights(init, random_model(small), 4.0, None)
    out = tmp_path / "b.safetensors"
    told = load_weights(train([vol], settings, out, init=init, progress=False).weights).model
    assert told.config == replace(small, acquisition_embedding=True)
    out.unlink()  # keep the checkpoint: resume it untold
    with pytest.raises(NiivInputError, match="architecture"):
        train([vol], replace(settings, acquisition_embedding=False), out, init=init, resume=True, progress=False)


def test_a_run_records_shipped_start_and_teacher_weights_by_name(tmp_path, medulla) -> None:
    """The shipped niiv-lm and niiv-fast named the training machine's paths of niiv-em
    (/work/.../niiv-em.safetensors) as their start and teacher: shipped weights are recorded by
    name, a user's own by their path."""
    from napari_niiv.inference.weights import resolve_weights, save_weights
    from tests.conftest import random_model

    vol = Volume(da.from_array(medulla))
    settings = TrainSettings(
        steps=1, alpha_max=8.0, teacher=str(resolve_weights("niiv-fast")), **{**FAST, "architecture": "fast"}
    )
    card = load_weights(
        train([vol], settings, tmp_path / "a.safetensors", init=resolve_weights("niiv-fast"), progress=False).weights
    ).card
    assert (card["fine_tuned_from"], card["distilled_from"]) == ("niiv-fast", "niiv-fast")
    own = save_weights(tmp_path / "own.safetensors", random_model(NiivConfig.fast()), 8.0, None)
    card = load_weights(train([vol], settings, tmp_path / "b.safetensors", init=own, progress=False).weights).card
    assert card["fine_tuned_from"] == str(own)


def test_a_time_limited_run_is_checked_and_previewed_through_its_time() -> None:
    """Checks and previews come every eval_every / preview_every steps, and with a time limit also
    ten and twenty times over it: a run its limit ended before the first step count got none."""
    from napari_niiv.training.train import _Clock

    clock = _Clock(100.0, 0.0)
    due = [t for t in np.arange(0, 101, 1.0) if clock.due("check", float(t), 10)]
    assert due == [10.0 * k for k in range(1, 11)]
    late = _Clock(100.0, 35.0)  # resumed 35 s into its limit: the next is at 40
    assert not late.due("check", 39.0, 10) and late.due("check", 40.5, 10) and not late.due("check", 45.0, 10)
    assert late.due("check", 71.0, 10) and not late.due("check", 79.9, 10)  # a late step skips, never repeats
    assert not _Clock(None, 0.0).due("check", 1e9, 10)
