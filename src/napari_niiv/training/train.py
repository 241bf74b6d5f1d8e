"""Self-supervised training: lateral crops pooled by alpha are taught to come back.

The loop knows nothing of napari: it reports through ``TrainCallback`` (step, loss, held-out
check, preview, checkpoint) and stops cooperatively when a callback asks, within one step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.io import Volume, as_volume
from ..data.pairs import LateralPairSampler
from ..inference.devices import autocast_dtype, pick_device
from ..inference.settings import InferenceSettings
from ..inference.weights import load_weights, restore_optimizer, save_weights
from ..model import NiivConfig, NiivModel
from .evaluate import evaluate, interpolation, niiv_method


@dataclass
class TrainSettings:
    """What a training run does. ``steps`` defines the learning-rate schedule; ``time_budget``
    (seconds) can end the run earlier."""

    alpha: float = 8.0
    architecture: str = "v2"
    steps: int = 5000
    batch: int = 8
    crop: int = 64
    points: int = 2048
    lr: float = 5e-4
    final_lr_fraction: float = 0.05
    warmup: int = 100
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    checkpoint_every: int = 250
    eval_every: int = 500
    preview_every: int = 100
    time_budget: float | None = None

    def lr_at(self, step: int, elapsed: float = 0.0) -> float:
        """Linear warm-up, then cosine decay to ``final_lr_fraction`` of ``lr``, following steps or
        the time budget, whichever is further along (so a time-limited run still anneals)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        if self.time_budget:
            t = max(t, elapsed / self.time_budget)
        t = min(1.0, t)
        return self.lr * (self.final_lr_fraction + (1 - self.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


def fine_tune_settings(
    alpha: float,
    steps: int = 1000,
    minutes: float | None = 5.0,
    lr: float = 1e-4,
    device: str = "auto",
    crop: int = 64,
) -> TrainSettings:
    """Settings for fine-tuning trained weights on one volume (the napari panel's): a fifth of the
    from-scratch learning rate, a short warm-up, small batches so a step takes a fraction of a
    second on a laptop CPU, and a held-out check ten times per run."""
    return TrainSettings(
        alpha=alpha,
        steps=steps,
        time_budget=minutes * 60 if minutes else None,
        lr=lr,
        warmup=20,
        batch=4,
        points=2048,
        crop=crop,
        device=device,
        checkpoint_every=100,
        eval_every=max(10, steps // 10),
        preview_every=max(10, steps // 20),
    )


class TrainCallback:
    """Hooks the training loop calls; override what you need (the napari widget does)."""

    def on_step(self, step: int, loss: float, lr: float) -> None: ...

    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_preview(self, step: int, model: NiivModel) -> None: ...

    def on_checkpoint(self, step: int, path: Path) -> None: ...

    def should_stop(self) -> bool:
        return False


@dataclass
class TrainResult:
    weights: Path
    checkpoint: Path
    steps_done: int
    stopped_early: bool
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    held_out: dict[str, float] | None = None


class HeldOutCheck:
    """niiv vs bilinear on volumes kept out of training (simulated alpha, xz slices)."""

    def __init__(self, volumes: Sequence[np.ndarray], alpha: float, cutoff: float = 25.0) -> None:
        self.volumes = [np.asarray(v) for v in volumes]
        self.alpha = alpha
        self.cutoff = cutoff
        (base,) = evaluate(self.volumes, alpha, {"bilinear": interpolation("bilinear")}, cutoff)
        self.bilinear = base

    def __call__(self, model: NiivModel, device: torch.device | str = "cpu") -> dict[str, float]:
        was_training = model.training
        niiv = niiv_method(model, InferenceSettings(self.alpha, orientation="xz", device=str(device)))
        (s,) = evaluate(self.volumes, self.alpha, {"niiv": niiv}, self.cutoff)
        model.train(was_training)
        return {
            "cf_psnr": s.cf_psnr,
            "psnr": s.psnr,
            "ssim": s.ssim,
            "cf_psnr_gain": s.cf_psnr - self.bilinear.cf_psnr,
            "psnr_gain": s.psnr - self.bilinear.psnr,
            "bilinear_cf_psnr": self.bilinear.cf_psnr,
            "bilinear_psnr": self.bilinear.psnr,
        }


def checkpoint_path(weights_path: Path) -> Path:
    return weights_path.with_name(weights_path.stem + ".ckpt.safetensors")


def train(
    volumes: Sequence[Any],
    settings: TrainSettings,
    out: str | Path,
    *,
    init: str | Path | None = None,
    resume: bool = False,
    z_ranges: Sequence[tuple[int, int] | None] | None = None,
    held_out: HeldOutCheck | None = None,
    callbacks: Sequence[TrainCallback] = (),
    progress: bool = True,
    card: dict[str, Any] | None = None,
) -> TrainResult:
    """Train (or fine-tune from ``init``) on ``volumes`` and write weights to ``out``.

    A checkpoint with the optimiser state is written atomically beside ``out`` every
    ``checkpoint_every`` steps and when stopped; ``resume=True`` continues from it exactly
    (batches depend only on seed and step).
    """
    out = Path(out)
    ckpt = checkpoint_path(out)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = pick_device(settings.device)
    amp = autocast_dtype(device, settings.precision)
    vols: list[Volume] = [as_volume(v) for v in volumes]
    torch.manual_seed(settings.seed)
    start_weights = load_weights(init) if init else None
    model = start_weights.model if start_weights else NiivModel(NiivConfig.named(settings.architecture))
    model = model.to(device).train()
    sampler = LateralPairSampler(vols, settings.alpha, settings.crop, settings.points, z_ranges)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    step, history, elapsed = 0, [], 0.0
    if resume and ckpt.exists():
        state = load_weights(ckpt, with_optimizer=True)
        model.load_state_dict(state.model.state_dict())
        restore_optimizer(optimizer, state)
        ts = state.train_state or {}
        step, history, elapsed = int(ts.get("step", 0)), list(ts.get("history", [])), float(ts.get("seconds", 0.0))

    base_card = {
        "architecture": settings.architecture
        if not start_weights
        else start_weights.card.get("architecture", "custom"),
        "alpha": settings.alpha,
        "data": [v.name for v in vols],
        "settings": asdict(settings),
        "fine_tuned_from": str(init) if init else None,
        **(card or {}),
    }

    def save(path: Path, with_state: bool, extra: dict[str, Any]) -> None:
        save_weights(
            path,
            model,
            settings.alpha,
            sampler.norms[0],
            card={**base_card, **extra},
            train_state={"step": step, "history": history, "seconds": elapsed} if with_state else None,
            optimizer=optimizer if with_state else None,
        )

    stopped = False
    last_check: dict[str, float] | None = None
    bar = tqdm(total=settings.steps, initial=step, disable=not progress, desc="training", unit="step")
    t_start = time.perf_counter() - elapsed
    while step < settings.steps:
        lr = settings.lr_at(step, time.perf_counter() - t_start)
        for g in optimizer.param_groups:
            g["lr"] = lr
        batch = sampler.batch(settings.seed, step, settings.batch).to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            pred = model(batch.inputs, batch.coords, settings.alpha)
        loss = (pred.float() - batch.targets).abs().mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step} (loss {loss.item()}); lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        elapsed = time.perf_counter() - t_start
        value = float(loss.item())
        history.append({"step": step, "loss": value, "seconds": round(elapsed, 2)})
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")
        for cb in callbacks:
            cb.on_step(step, value, lr)
        if held_out is not None and step % settings.eval_every == 0:
            last_check = held_out(model, device)
            history[-1].update({"held_out_" + k: v for k, v in last_check.items()})
            bar.write(
                f"step {step}: held-out CF-PSNR {last_check['cf_psnr']:.2f} dB "
                f"({last_check['cf_psnr_gain']:+.2f} vs bilinear)"
            )
            for cb in callbacks:
                cb.on_eval(step, last_check)
        if settings.preview_every and step % settings.preview_every == 0:
            for cb in callbacks:
                cb.on_preview(step, model)
        stop_now = any(cb.should_stop() for cb in callbacks) or (
            settings.time_budget is not None and elapsed >= settings.time_budget
        )
        if step % settings.checkpoint_every == 0 or stop_now or step == settings.steps:
            save(ckpt, True, {})
            for cb in callbacks:
                cb.on_checkpoint(step, ckpt)
        if stop_now:
            stopped = step < settings.steps
            break
    bar.close()
    # Score the final model unless the last step already did (a resumed run may not have).
    if held_out is not None and (last_check is None or not history or "held_out_cf_psnr" not in history[-1]):
        last_check = held_out(model, device)
    save(
        out,
        False,
        {
            "steps": step,
            "seconds": round(elapsed, 1),
            "final_loss": float(np.mean([h["loss"] for h in history[-50:]])) if history else None,
            "held_out": last_check,
        },
    )
    return TrainResult(out, ckpt, step, stopped, elapsed, history, last_check)
