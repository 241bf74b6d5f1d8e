import dask.array as da
import numpy as np
import pytest
import torch

from napari_niiv.data import LateralPairSampler, Volume
from napari_niiv.inference.weights import load_weights
from napari_niiv.training.train import HeldOutCheck, TrainCallback, TrainSettings, checkpoint_path, train

TINY = dict(alpha=4.0, batch=4, crop=32, points=512, warmup=5, device="cpu", precision="fp32", preview_every=2)


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


def test_training_lowers_the_loss_on_real_data(tmp_path, medulla) -> None:
    vol = Volume(da.from_array(medulla))
    fixed = LateralPairSampler([vol], 4.0, 32, 2048).batch(seed=999, step=0, size=16)
    settings = TrainSettings(steps=80, lr=1e-3, **TINY)
    rec = Recorder()
    result = train([vol], settings, tmp_path / "w.safetensors", progress=False, callbacks=[rec])
    start = load_weights(result.weights).model
    from napari_niiv.model import NiivModel

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
