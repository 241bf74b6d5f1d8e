"""Self-supervised training: lateral crops pooled by alpha are taught to come back.

The loop knows nothing of napari: it reports through ``TrainCallback`` (step, loss, held-out
check, preview, checkpoint) and stops cooperatively when a callback asks, within one step.

What a run guarantees (the CLI and the panel rely on it):

- Everything that can be checked is checked before the first step: the output's folder is
  writable and has room, the volumes are usable, the held-out volume can be scored.
- A checkpoint (model, optimiser, step, history) is written atomically beside the weights every
  ``checkpoint_every`` steps, when stopped, and on Ctrl-C: in the main thread the first SIGINT
  ends the run after the current step with a checkpoint and raises :class:`TrainingInterrupted`;
  a second one interrupts at once, keeping the last checkpoint. A kill keeps the last one too.
- ``resume=True`` continues the checkpoint to exactly the result of an uninterrupted run
  (batches depend only on seed and step), and refuses, naming them, settings or training data
  other than the checkpoint's; with no checkpoint it refuses instead of starting from step 0.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.degrade import THICK, Degradation, check_alpha, parse_degradations
from ..data.io import Volume, as_volume
from ..data.pairs import LateralPairSampler, parse_focus, volume_label
from ..errors import NiivInputError
from ..inference.devices import autocast_dtype, pick_device, precision_name
from ..inference.settings import InferenceSettings
from ..inference.store import check_room, check_writable, output_lock
from ..inference.suggestion import ALPHA_TOLERANCE
from ..inference.weights import (
    GET_IT_AGAIN,
    Weights,
    learned_degradations,
    load_weights,
    read_metadata,
    recorded_name,
    remove_stray_temporaries,
    resolve_weights,
    restore_optimizer,
    save_weights,
    shipped_dir,
)
from ..model import NiivConfig, NiivModel
from ..model.config import ARCHITECTURES
from .evaluate import evaluate, interpolation, niiv_method


@dataclass
class TrainSettings:
    """What a training run does. ``steps`` defines the learning-rate schedule; ``time_budget``
    (seconds) can end the run earlier."""

    alpha: float = 8.0
    # Train over alpha .. alpha_max (uniform per batch, fractions included) for one model of any alpha.
    alpha_max: float | None = None
    # Comma-separated forward models (data.degrade.DEGRADATIONS), one drawn per batch.
    degradations: str = "thick"
    # Extra batches where a model is weakest: DEGRADATION@LO-HI items (data.pairs.parse_focus),
    # drawn for focus_fraction of the batches; the rest stay uniform over the whole range.
    focus: str = ""
    focus_fraction: float = 0.0
    architecture: str = ARCHITECTURES[0]
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
    # Distillation: weights (shipped name or path) whose outputs on the same crops are the targets,
    # instead of the true lateral planes (how niiv-fast learns from the default model).
    teacher: str | None = None
    # Tell the network alpha and the sections' thickness (NiivConfig.acquisition_embedding), for a
    # model of a range of alphas or degradations; added at zero to init weights that lack it.
    acquisition_embedding: bool = False

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
    # The step this call started from (a resume's checkpoint step; 0 for a new run): equal to
    # steps_done when a resumed run had nothing left to train (complete, or its time limit spent)
    # and rewrote its weights unchanged.
    started_at: int = 0


SSIM_SIDE = 11  # the metrics' SSIM window: a slice needs at least this many pixels a side


def held_out_min_planes(alpha: float) -> int:
    """The fewest z planes a held-out volume needs: two pooled rows, and scored slices as deep as
    the SSIM window."""
    rows = max(2, math.ceil(SSIM_SIDE / alpha - 1e-9))
    return math.ceil(rows * alpha - 1e-9)


def check_held_out(volume: Any, alpha: float, what: str = "the held-out volume") -> np.ndarray:
    """A held-out volume as an array, or a message saying why it cannot be scored (``what`` names it)."""
    v = np.asarray(volume)
    if v.ndim != 3:
        raise NiivInputError(f"{what} is {v.ndim}D (shape {v.shape}); give one isotropic 3D (z, y, x) volume")
    if v.dtype.kind not in "uif":
        raise NiivInputError(f"{what} has pixel type {v.dtype}; use an integer or floating-point volume")
    z, y, x = v.shape
    need = held_out_min_planes(alpha)
    if z < need:
        raise NiivInputError(
            f"{what} has {z} z plane(s) (shape {v.shape}); pooled by alpha {alpha:g} it needs "
            f"at least {need} to be scored: give a larger one"
        )
    if x < SSIM_SIDE or y < 1:
        raise NiivInputError(
            f"{what} is {y}x{x} px in y and x (shape {v.shape}); its xz slices need at least "
            f"{SSIM_SIDE} px along x to be scored: give a larger one"
        )
    if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
        raise NiivInputError(
            f"{what} contains NaN or infinite values; replace them (e.g. with 0 or the background level)"
        )
    if v.min() == v.max():
        raise NiivInputError(f"{what} is constant: there is nothing to score on it")
    return v


class HeldOutCheck:
    """niiv vs bilinear and bicubic on volumes kept out of training (simulated alpha and
    degradation, xz slices). Bicubic is what a user would pick instead of niiv, so the weights'
    card records the gain over it too (the shipped cards' baseline)."""

    def __init__(
        self,
        volumes: Sequence[np.ndarray],
        alpha: float,
        cutoff: float = 25.0,
        degradation: Degradation = THICK,
        what: str = "the held-out volume",
    ) -> None:
        self.volumes = [check_held_out(v, alpha, what) for v in volumes]
        self.alpha = alpha
        self.cutoff = cutoff
        self.degradation = degradation
        self.what = what
        baselines = {name: interpolation(name) for name in ("bilinear", "bicubic")}
        self.bilinear, self.bicubic = evaluate(self.volumes, alpha, baselines, cutoff, degradation=degradation)

    def describe(self) -> dict[str, Any]:
        """What the check scores, for the weights' card beside its numbers."""
        return {
            "scored": self.what,
            "shapes": [list(v.shape) for v in self.volumes],
            "alpha": self.alpha,
            "degradation": str(self.degradation),
            "cf_psnr_cutoff": self.cutoff,
        }

    def check_fits(self, config: NiivConfig) -> None:
        """Refuse, before training, volumes narrower than a model of ``config`` can reconstruct."""
        need = config.receptive_radius + 1
        for v in self.volumes:
            if v.shape[2] < need:
                raise NiivInputError(
                    f"the held-out volume is {v.shape[2]} px along x (shape {v.shape}); the model's xz slices "
                    f"need at least {need} (its receptive field): give a larger one"
                )

    def __call__(self, model: NiivModel, device: torch.device | str = "cpu") -> dict[str, float]:
        was_training = model.training
        niiv = niiv_method(model, InferenceSettings(self.alpha, orientation="xz", device=str(device)))
        (s,) = evaluate(self.volumes, self.alpha, {"niiv": niiv}, self.cutoff, degradation=self.degradation)
        model.train(was_training)
        return {
            "cf_psnr": s.cf_psnr,
            "psnr": s.psnr,
            "ssim": s.ssim,
            "cf_psnr_gain": s.cf_psnr - self.bilinear.cf_psnr,
            "psnr_gain": s.psnr - self.bilinear.psnr,
            "bilinear_cf_psnr": self.bilinear.cf_psnr,
            "bilinear_psnr": self.bilinear.psnr,
            "cf_psnr_gain_bicubic": s.cf_psnr - self.bicubic.cf_psnr,
            "psnr_gain_bicubic": s.psnr - self.bicubic.psnr,
            "bicubic_cf_psnr": self.bicubic.cf_psnr,
            "bicubic_psnr": self.bicubic.psnr,
        }


def checkpoint_path(weights_path: Path) -> Path:
    return weights_path.with_name(weights_path.stem + ".ckpt.safetensors")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM: ``signum``) ended a run. ``checkpoint`` holds step ``step`` of ``steps``
    (``None``: none was written yet); ``saved_now`` says it was written at the interrupt, else it is
    the last one written before (a second signal, or one outside the steps, interrupts at once)."""

    def __init__(
        self, step: int, steps: int, checkpoint: Path | None, saved_now: bool, signum: int = signal.SIGINT
    ) -> None:
        super().__init__(f"training interrupted at step {step} of {steps}")
        self.step, self.steps, self.checkpoint, self.saved_now = step, steps, checkpoint, saved_now
        self.signum = int(signum)


def _notice(text: str) -> None:
    with contextlib.suppress(OSError):  # raw: a signal handler must not re-enter sys.stderr's buffer
        os.write(2, text.encode())


class _StopOnInterrupt:
    """While entered (main thread only, where Python delivers signals): the first SIGINT asks the
    loop to stop after the current step, a second one raises KeyboardInterrupt at once. A SIGINT
    the process ignores stays ignored. SIGTERM (``kill``, ``timeout``, a batch scheduler's end of a
    job, ``docker stop``) is handled the same where nothing else handles it: it killed the run
    without a checkpoint, losing every step since the last one."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int = signal.SIGINT
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous not in (signal.SIG_IGN, None):
                self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.restore()
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        if signum == signal.SIGTERM:
            _notice("\nniiv: terminated (SIGTERM): stopping after this step to save a checkpoint\n")
        else:
            _notice("\nniiv: Ctrl-C: stopping after this step to save a checkpoint (Ctrl-C again stops at once)\n")

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def __exit__(self, *exc: object) -> None:
        self.restore()


class _Clock:
    """When a time-limited run is due for its next check or preview: ``per_run`` times spread
    over its time limit (none without one), counted from where a resumed run starts."""

    def __init__(self, budget: float | None, start: float) -> None:
        self.budget = budget
        self.next: dict[str, float] = {}
        self.start = start

    def due(self, what: str, elapsed: float, per_run: int) -> bool:
        if not self.budget:
            return False
        interval = self.budget / per_run
        at = self.next.setdefault(what, (np.floor(self.start / interval) + 1) * interval)
        if elapsed < at:
            return False
        self.next[what] = (np.floor(elapsed / interval) + 1) * interval
        return True


def check_output(out: str | Path) -> None:
    """Refuse, before any work, weights that could not be written at ``out``: a folder in the way,
    the shipped weights' folder, or a folder that refuses a new file (see
    :func:`inference.store.check_writable`)."""
    out = Path(out)
    if out.is_dir():
        raise NiivInputError(f"{out} is a folder; give a weights file name ending in .safetensors")
    if out.parent.resolve() == shipped_dir().resolve():
        raise NiivInputError(
            f"{out} is in the shipped weights' folder, and the shipped weights are never overwritten: "
            "choose another name"
        )
    check_writable(out)


# How a refusal names the options: train()'s parameters, or the CLI's flags (cli.cmd_train).
API_OPTIONS = ("out", "resume=True", "overwrite=True")


def check_new_run(
    out: str | Path, *, resume: bool = False, overwrite: bool = False, options: tuple[str, str, str] = API_OPTIONS
) -> None:
    """Refuse a new run (not a resume) where weights ``out`` or a run's checkpoint beside it already
    exist, unless ``overwrite``: user weights and an unfinished run are never replaced silently.
    ``options`` names the output, resuming and overwriting as the caller takes them (``niiv train``:
    ``--out``, ``--resume``, ``--overwrite``)."""
    if resume or overwrite:
        return
    out = Path(out)
    name, resuming, overwriting = options
    if out.exists():
        raise NiivInputError(f"{out} already exists; choose another {name}, {resuming}, or pass {overwriting}")
    ckpt = checkpoint_path(out)
    if ckpt.exists():
        steps = _complete_run(ckpt)
        done = (  # killed while writing its weights (or they were moved away): nothing is left to train
            f" (its steps are all done, {steps} of {steps}, but its weights {out} are missing: killed while writing "
            f"them, or moved away; {resuming} writes them from it)"
            if steps is not None
            else ""
        )
        raise NiivInputError(
            f"{ckpt} holds an unfinished run: pass {resuming} to continue it, or {overwriting} to start anew{done}"
        )


def _complete_run(ckpt: Path) -> int | None:
    """The steps of the run a checkpoint holds when it holds all of them, else None (unfinished,
    unreadable, or of a version that did not record its steps)."""
    try:
        state = json.loads(read_metadata(ckpt).get("train_state", "null"))
        step, steps = state["step"], state["run"]["settings"]["steps"]
    except (NiivInputError, ValueError, TypeError, KeyError):
        return None
    return steps if isinstance(step, int) and isinstance(steps, int) and 0 < steps <= step else None


def _check_room(out: Path, model: NiivModel) -> None:
    """The checkpoint (weights and Adam's two moments), its temporary copy while it is replaced,
    and the weights must fit on the output's disk. A checkpoint and weights already there (a
    resume, an --overwrite) are replaced by these, so their room counts as free: a resume was
    refused on a disk its run had fitted on. Each counts up to the size of what replaces it."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    mine = 0
    for path, most in ((checkpoint_path(out), 3 * size), (out, size)):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                mine += min(path.stat().st_size, most)
    check_room(out, 7 * size + 2**20 - mine, "training")


# Settings that change what a run learns: a resumed run must share them with its checkpoint.
# (device, precision, threads, time budget and the reporting intervals may change.)
RUN_SETTINGS = (
    "alpha",
    "alpha_max",
    "degradations",
    "focus",
    "focus_fraction",
    "steps",
    "batch",
    "crop",
    "points",
    "lr",
    "final_lr_fraction",
    "warmup",
    "seed",
    "teacher",
)


def check_settings(settings: TrainSettings) -> None:
    """Refuse, before any work, settings a run cannot honour (the Python API takes any value: the CLI's
    parser and the panel's boxes check theirs): a time limit that is not a positive number of seconds
    (a negative one wrote the start weights back as a run's result, a NaN one was no limit), steps,
    batch, points and intervals that are not whole numbers of at least one, a learning rate that is
    not a positive number, and alpha 1 alone, which simulates no anisotropy: nothing to learn."""
    alpha = check_alpha(settings.alpha)
    top = check_alpha(settings.alpha_max) if settings.alpha_max is not None else alpha
    if top < alpha:
        raise NiivInputError(f"alpha_max {top:g} is below alpha {alpha:g}: give the range's low end as alpha")
    if top == 1.0:
        raise NiivInputError(
            "alpha 1 simulates no anisotropy (the sections would be the planes themselves): there is nothing to "
            "learn; train for the alpha of your data, above 1"
        )
    for name in ("steps", "batch", "points", "checkpoint_every", "eval_every"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise NiivInputError(f"{name} {value!r}: give a whole number of at least 1")
    if isinstance(settings.preview_every, bool) or not isinstance(settings.preview_every, (int, np.integer)):
        raise NiivInputError(f"preview_every {settings.preview_every!r}: give a whole number (0: no previews)")
    if settings.time_budget is not None and not (
        isinstance(settings.time_budget, (int, float))
        and math.isfinite(settings.time_budget)
        and settings.time_budget > 0
    ):
        raise NiivInputError(
            f"time limit {settings.time_budget!r} s: give a positive number of seconds, or None for no time limit"
        )
    if not (isinstance(settings.lr, (int, float)) and math.isfinite(settings.lr) and settings.lr > 0):
        raise NiivInputError(f"learning rate {settings.lr!r}: give a positive number such as 5e-4")
    focus = parse_focus(settings.focus or "")  # "," or " " name no focus at all
    if settings.focus_fraction and not focus:  # drew no extra batches, silently
        raise NiivInputError(
            f"focus_fraction {settings.focus_fraction:g} without focus does nothing: give focus (where the extra "
            "batches go, e.g. 'thick@10-12'), or set focus_fraction 0"
        )
    if focus and not settings.focus_fraction:  # likewise
        raise NiivInputError(
            f"focus {settings.focus!r} with focus_fraction 0 does nothing: give the fraction of batches drawn "
            "from it (e.g. 0.5), or drop focus"
        )


def check_held_out_apart(held: HeldOutCheck, volumes: Sequence[Volume], z_ranges: Sequence[Any] | None) -> None:
    """Refuse a held-out volume that shares xy planes with the planes the run trains on (the same
    data saved twice, as .tif and .npy or uint8 and float; or overlapping crops of one volume): its
    scores, written into the weights' card, would not be held out. Planes are compared by their
    values (as float32), constant planes (padding) aside. Training volumes of up to
    ``OVERLAP_SCAN_BYTES`` are compared plane by plane, larger ones on ``OVERLAP_SAMPLE`` planes
    spread over them."""
    ranges = list(z_ranges) if z_ranges is not None else [None] * len(volumes)
    for h in held.volumes:
        keys = {}
        for z in range(h.shape[0]):
            plane = np.asarray(h[z])
            if plane.min() != plane.max():
                keys.setdefault(_plane_key(plane), z)
        if not keys:
            continue
        for vol, zr in zip(volumes, ranges, strict=True):
            if tuple(vol.shape[1:]) != tuple(h.shape[1:]):
                continue
            z0, z1 = zr if zr is not None else (0, vol.shape[0])
            plane_bytes = int(np.prod(vol.shape[1:])) * np.dtype(vol.data.dtype).itemsize
            sampled = (z1 - z0) * plane_bytes > OVERLAP_SCAN_BYTES
            if not sampled:  # every plane, read in blocks of ~64 MiB
                step = max(1, (64 << 20) // max(1, plane_bytes))
                blocks = [(z, min(z + step, z1)) for z in range(z0, z1, step)]
            else:  # a sample of planes, each read alone
                blocks = [(int(z), int(z) + 1) for z in sorted(set(np.linspace(z0, z1 - 1, OVERLAP_SAMPLE).round()))]
            shared = []
            for a, b in blocks:
                data = np.asarray(vol.data[a:b])
                for z in range(a, b):
                    key = _plane_key(data[z - a])
                    if key in keys:
                        shared.append((keys[key], z))
            if shared:
                (zh, zt), n = shared[0], f"{'at least ' if sampled else ''}{len(shared)}"
                raise NiivInputError(
                    f"{held.what} shares {n} xy plane(s) with the training volume {vol.name or '(unnamed)'} (e.g. its "
                    f"plane {zh} is plane {zt} there), so its scores would not be held out: hold out data the run does "
                    "not train on (another volume, or planes outside the training region)"
                )


OVERLAP_SCAN_BYTES = 1 << 30
OVERLAP_SAMPLE = 64


def check_finite(sampler: LateralPairSampler, volumes: Sequence[Volume], z_ranges: Sequence[Any] | None = None) -> None:
    """Refuse, before the first step, a floating-point training volume with NaN or infinite values
    among the planes it trains on, naming the volume and the first such plane: the normalisation's
    sample can miss them, and the run then stopped at the first crop that met one (hours in, and
    again on every resume). Volumes the sampler holds in memory are scanned whole; larger ones,
    read lazily, are still refused at such a crop."""
    ranges = list(z_ranges) if z_ranges is not None else [None] * len(volumes)
    for i, ((data, z0, z1), zr) in enumerate(zip(sampler.volumes, ranges, strict=True)):
        if not isinstance(data, np.ndarray) or data.dtype.kind != "f":
            continue
        first = zr[0] if zr is not None else 0  # the sampler's in-memory copy starts at the range's plane
        plane = max(1, int(np.prod(data.shape[1:])))
        step = max(1, (64 << 20) // (plane * data.dtype.itemsize))
        for a in range(z0, z1, step):
            bad = ~np.isfinite(data[a : min(a + step, z1)]).reshape(-1, plane).all(axis=1)
            if bad.any():
                z = first + a + int(np.argmax(bad))
                raise NiivInputError(
                    f"{volume_label(volumes, i)} contains NaN or infinite values (first in plane z {z}); replace "
                    "them (e.g. with 0 or the background level), or train on a region without them"
                )


def _plane_key(plane: np.ndarray) -> bytes:
    """A digest of a plane's values, the same for the same values in any pixel type float32 holds exactly."""
    return hashlib.blake2b(np.ascontiguousarray(plane, dtype=np.float32).tobytes(), digest_size=16).digest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (which weights a run started from, whatever its path names later)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _span(lo: float, hi: float) -> str:
    return f"alpha {lo:g}" if lo == hi else f"alpha {lo:g} to {hi:g}"


def _load_teacher(
    name: str | None,
    device: torch.device,
    degradations: Sequence[Degradation] = (),
    alphas: tuple[float, float] | None = None,
) -> NiivModel | None:
    """The frozen model whose outputs are the targets of a distillation run (validated on load);
    refused when it never learned the sections the run simulates, or when the run's ``alphas``
    (low, high) reach outside the range it was trained over: its outputs there are extrapolations,
    no targets (the same tolerance as the viewer's note on weights used outside their range)."""
    if not name:
        return None
    path = resolve_weights(name)
    learned = learned_degradations(path)
    unknown = [str(d) for d in degradations if d.kind not in learned]
    if unknown:
        raise NiivInputError(
            f"the teacher {name} learned {', '.join(learned)} sections, not {', '.join(unknown)}: its outputs there "
            "are no targets to learn from; distil from weights that learned them (`niiv info` lists each one's)"
        )
    weights = load_weights(path)
    if alphas is not None:
        (lo, hi), (run_lo, run_hi) = weights.alpha_range, alphas
        if run_lo < lo * (1 - ALPHA_TOLERANCE) or run_hi > hi * (1 + ALPHA_TOLERANCE):
            raise NiivInputError(
                f"the teacher {name} was trained for {_span(lo, hi)}, and this run trains for {_span(run_lo, run_hi)}: "
                f"outside its range its outputs are extrapolations, no targets to learn from; train within its range "
                f"(the run's lowest and highest alpha inside {_span(lo, hi)}), or distil from weights trained for "
                f"{_span(run_lo, run_hi)} (`niiv info` lists each one's)"
            )
    teacher = weights.model.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _preset(config: dict[str, Any]) -> str | None:
    """The preset (``--arch``) a configuration is, its acquisition embedding aside; None if none."""

    def base(c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if k != "acquisition_embedding"}

    return next((n for n in ARCHITECTURES if base(NiivConfig.named(n).to_dict()) == base(config)), None)


def architecture_name(config: dict[str, Any]) -> str:
    """The preset a configuration is (``--arch``), with its acquisition embedding said: niiv-em is
    v1 with one, niiv-fast fast with one; 'custom' for anything else."""
    name = _preset(config)
    if name is None:
        return "custom"
    return name + (" with acquisition embedding" if config.get("acquisition_embedding") else "")


def same_architecture(a: NiivConfig, b: NiivConfig) -> bool:
    """Whether two configurations are one preset (``--arch``), an acquisition embedding aside."""
    preset = _preset(a.to_dict())
    return preset is not None and preset == _preset(b.to_dict())


def run_identity(
    settings: TrainSettings,
    model: NiivModel,
    volumes: Sequence[Volume],
    sampler: LateralPairSampler,
    z_ranges: Sequence[tuple[int, int] | None] | None = None,
) -> dict[str, Any]:
    """What makes a run this run (stored in its checkpoint, compared on resume): the settings that
    change what it learns, the architecture, and each volume's shape, pixel type, usable planes,
    normalisation and a hash of a few tiles of the planes used (so another region or other
    content is noticed, not only another shape)."""
    ranges = list(z_ranges) if z_ranges is not None else [None] * len(volumes)
    data = []
    for vol, (arr, z0, z1), norm, planes in zip(volumes, sampler.volumes, sampler.norms, ranges, strict=True):
        h = hashlib.sha256()
        for z in sorted({z0, (z0 + z1) // 2, z1 - 1}):
            h.update(np.ascontiguousarray(np.asarray(arr[z, : sampler.crop, : sampler.crop])).tobytes())
        data.append(
            {
                "shape": list(vol.shape),
                "dtype": str(np.dtype(vol.data.dtype)),
                "planes": list(planes) if planes is not None else None,
                "normalisation": [norm.low, norm.high],
                "sample": h.hexdigest()[:16],
            }
        )
    identity = {
        "settings": {k: getattr(settings, k) for k in RUN_SETTINGS},
        "model": model.config.to_dict(),
        "data": data,
    }
    return json.loads(json.dumps(identity))  # as it reads back from a checkpoint


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def check_same_run(path: Path, saved: Weights, identity: dict[str, Any]) -> None:
    """Refuse to resume the checkpoint ``saved`` (at ``path``) for another run, naming what differs."""
    run = (saved.train_state or {}).get("run") or {}
    diffs = []
    settings = run.get("settings") or {"alpha": saved.alpha}  # checkpoints before this check: their alpha
    for key, value in identity["settings"].items():
        if key in settings and settings[key] != value:
            diffs.append(f"{key} {_fmt(settings[key])} (this run: {_fmt(value)})")
    then, now = saved.model.config.to_dict(), identity["model"]
    if then != now:
        a, b = architecture_name(then), architecture_name(now)
        if a == b:  # two custom configurations
            a, b = (", ".join(f"{k} {_fmt(c[k])}" for k in sorted(then) if then[k] != now.get(k)) for c in (then, now))
        diffs.append(f"architecture {a} (this run: {b})")
    data = run.get("data")
    if data is not None and data != identity["data"]:
        shapes = [tuple(d["shape"]) for d in data]
        here = [tuple(d["shape"]) for d in identity["data"]]
        if shapes != here:
            diffs.append(f"training volume shapes {shapes} (this run: {here})")
        else:
            diffs.append("training data: same shapes, but other content, region or held-out planes")
    started = saved.card.get("fine_tuned_from")
    if diffs and started:
        diffs.append(f"the checkpoint's run started from the weights {started} (--init)")
    if diffs:
        raise NiivInputError(
            f"cannot resume {path}: this run differs from the checkpoint's in {'; '.join(diffs)}. "
            "Resume with the checkpoint's settings and data, or start a new run instead "
            "(niiv train: without --resume, with --overwrite; in the viewer: Start under another name)"
        )


def _resumed_state(ckpt: Path, ts: dict[str, Any] | None, steps: int) -> tuple[int, list[dict[str, Any]], float]:
    """A checkpoint's step, history and training time, or a message saying it is damaged (a step
    that is not a whole number from 0 to the run's steps was a ValueError traceback)."""
    ts = ts if isinstance(ts, dict) else {}
    step, history, seconds = ts.get("step", 0), ts.get("history", []), ts.get("seconds", 0.0)
    fine = (
        isinstance(step, int)
        and not isinstance(step, bool)
        and 0 <= step <= steps
        and isinstance(history, list)
        and all(isinstance(h, dict) for h in history)
        and isinstance(seconds, (int, float))
        and math.isfinite(seconds)
        and seconds >= 0
    )
    if not fine:
        raise NiivInputError(
            f"{ckpt}: its training state is damaged (step {step!r} of {steps}, {type(history).__name__} history, "
            f"{seconds!r} s); start a new run (niiv train: without --resume, with --overwrite; in the viewer: Start "
            "under another name)"
        )
    return step, list(history), float(seconds)


def _one_run_per_output(run: Callable[..., TrainResult]) -> Callable[..., TrainResult]:
    """One run per ``out``: ``OUT.lock`` (``inference.store.output_lock``) refuses a second,
    naming the first's pid, and is taken over from a process that is gone; holding it, the run
    removes the temporary files a killed run's atomic saves of ``out`` or its checkpoint left."""

    @functools.wraps(run)
    def locked(volumes: Sequence[Any], settings: TrainSettings, out: str | Path, **options: Any) -> TrainResult:
        out = Path(out)
        check_output(out)
        with output_lock(out):
            for path in (out, checkpoint_path(out)):
                remove_stray_temporaries(path)
            return run(volumes, settings, out, **options)

    return locked


@_one_run_per_output
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
    overwrite: bool = False,
) -> TrainResult:
    """Train (or fine-tune from ``init``) on ``volumes`` and write weights to ``out``.

    A new run refuses an ``out`` that exists, or the checkpoint of an unfinished run beside it,
    unless ``overwrite`` (:func:`check_new_run`): nothing is replaced silently.

    A checkpoint with the optimiser state is written atomically beside ``out`` every
    ``checkpoint_every`` steps, when stopped and on Ctrl-C (then :class:`TrainingInterrupted`
    is raised); ``resume=True`` continues from it exactly (batches depend only on seed and
    step), and raises :class:`NiivInputError` when there is none or it belongs to another run.
    """
    out = Path(out)
    ckpt = checkpoint_path(out)
    check_output(out)
    check_new_run(out, resume=resume, overwrite=overwrite)
    check_settings(settings)
    if resume and not ckpt.exists():
        raise NiivInputError(
            f"nothing to resume: there is no checkpoint {ckpt} (a run writes it beside its weights every "
            f"{settings.checkpoint_every} steps, when stopped and on Ctrl-C); start without resuming"
        )
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = pick_device(settings.device)
    amp = autocast_dtype(device, settings.precision)
    vols: list[Volume] = [as_volume(v) for v in volumes]
    torch.manual_seed(settings.seed)
    start_weights = load_weights(init) if init else None
    if start_weights is not None:  # a fine-tune keeps its start's architecture: the card's settings say that one
        arch = start_weights.card.get("architecture") or architecture_name(start_weights.model.config.to_dict())
        settings = replace(settings, architecture=str(arch))
    model = start_weights.model if start_weights else NiivModel(NiivConfig.named(settings.architecture))
    if settings.acquisition_embedding and not model.config.acquisition_embedding:
        model = model.with_acquisition_embedding()
    _check_room(out, model)
    if held_out is not None:
        held_out.check_fits(model.config)
        check_held_out_apart(held_out, vols, z_ranges)
    model = model.to(device).train()
    alphas = (settings.alpha, settings.alpha_max or settings.alpha)
    teacher = _load_teacher(settings.teacher, device, parse_degradations(settings.degradations), alphas)
    sampler = LateralPairSampler(
        vols,
        alphas,
        settings.crop,
        settings.points,
        z_ranges,
        degradations=parse_degradations(settings.degradations),
        focus=parse_focus(settings.focus),
        focus_fraction=settings.focus_fraction,
    )
    check_finite(sampler, vols, z_ranges)
    identity = run_identity(settings, model, vols, sampler, z_ranges)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    step, history, elapsed = 0, [], 0.0
    started_from = recorded_name(init) if init else None
    started_sha = file_sha256(Path(init)) if init else None  # which file that was, whatever its path names later
    saved_step: int | None = None  # the step the checkpoint on disk holds, as far as this run knows
    if resume:
        try:
            state = load_weights(ckpt, with_optimizer=True)
        except NiivInputError as exc:  # its own advice (GET_IT_AGAIN) is a weights file's, not a checkpoint's
            why = str(exc).replace(f"; {GET_IT_AGAIN}", "")
            raise NiivInputError(
                f"cannot resume from the checkpoint: {why}. Unless you kept an intact copy of it, start a new run "
                "(niiv train: without --resume, with --overwrite; in the viewer: Start under another name)"
            ) from None
        check_same_run(ckpt, state, identity)
        model.load_state_dict(state.model.state_dict())
        restore_optimizer(optimizer, state)
        step, history, elapsed = _resumed_state(ckpt, state.train_state, settings.steps)
        started_from = state.card.get("fine_tuned_from", started_from)  # the run's start, not the checkpoint
        started_sha = state.card.get("fine_tuned_from_sha256", started_sha)
        saved_step = step
    started_at = step

    base_card = {
        "architecture": settings.architecture
        if not start_weights
        else start_weights.card.get("architecture", "custom"),
        "alpha": settings.alpha,
        "alpha_range": list(sampler.alpha_range),
        "degradations": [str(d) for d in sampler.degradations],
        "data": [v.name for v in vols],
        "settings": asdict(settings),
        "precision": precision_name(amp),  # what it ran in
        "fine_tuned_from": started_from,
        **({"fine_tuned_from_sha256": started_sha} if started_sha else {}),
        **(
            {
                "distilled_from": recorded_name(settings.teacher),
                "distilled_from_sha256": file_sha256(resolve_weights(settings.teacher)),
            }
            if settings.teacher
            else {}
        ),
        **({"held_out_check": held_out.describe()} if held_out is not None else {}),
        **(card or {}),
    }

    def save(path: Path, with_state: bool, extra: dict[str, Any]) -> None:
        try:
            save_weights(
                path,
                model,
                settings.alpha,
                sampler.norms[0],
                card={**base_card, **extra},
                train_state={"step": step, "history": history, "seconds": elapsed, "run": identity}
                if with_state
                else None,
                optimizer=optimizer if with_state else None,
            )
        except OSError as exc:
            kept = f"the checkpoint {ckpt} of step {saved_step} is intact" if saved_step is not None else "none"
            raise NiivInputError(
                f"could not write {path} ({exc.strerror or exc}); the last checkpoint: {kept}. "
                "Free space or fix the folder, then resume"
            ) from exc

    stopped = False
    last_check: dict[str, float] | None = None
    bar = tqdm(total=settings.steps, initial=step, disable=not progress, desc="training", unit="step")
    t_start = time.perf_counter() - elapsed
    interrupt = _StopOnInterrupt()
    clock = _Clock(settings.time_budget, elapsed)
    try:
        with interrupt:
            while step < settings.steps:
                if settings.time_budget is not None and elapsed >= settings.time_budget:
                    stopped = True  # resumed with its time already spent: nothing more to do
                    break
                lr = settings.lr_at(step, time.perf_counter() - t_start)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                batch = sampler.batch(settings.seed, step, settings.batch).to(device)
                thickness = batch.degradation.thickness(batch.alpha)
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    targets = batch.targets
                    if teacher is not None:
                        with torch.no_grad():
                            targets = teacher(batch.inputs, batch.coords, batch.alpha, thickness).float()
                    pred = model(batch.inputs, batch.coords, batch.alpha, thickness)
                loss = (pred.float() - targets).abs().mean()
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training diverged at step {step} (loss {loss.item()}); lower the learning rate"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                elapsed = time.perf_counter() - t_start
                value = float(loss.item())
                history.append({"step": step, "loss": value, "seconds": elapsed})
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
                for cb in callbacks:
                    cb.on_step(step, value, lr)
                # by steps, and with a time limit by time too: a run its limit ends early still
                # gets its checks and previews (ten and twenty per run)
                check_now = step % settings.eval_every == 0 or clock.due("check", elapsed, 10)
                preview_now = settings.preview_every and (
                    step % settings.preview_every == 0 or clock.due("preview", elapsed, 20)
                )
                if held_out is not None and check_now:
                    last_check = held_out(model, device)
                    history[-1].update({"held_out_" + k: v for k, v in last_check.items()})
                    if progress:  # tqdm.write prints even for a disabled bar: a GUI's run filled the terminal
                        bar.write(
                            f"step {step}: held-out CF-PSNR {last_check['cf_psnr']:.2f} dB "
                            f"({last_check['cf_psnr_gain']:+.2f} vs bilinear)"
                        )
                    for cb in callbacks:
                        cb.on_eval(step, last_check)
                if preview_now:
                    for cb in callbacks:
                        cb.on_preview(step, model)
                stop_now = (
                    interrupt.requested
                    or any(cb.should_stop() for cb in callbacks)
                    or (settings.time_budget is not None and elapsed >= settings.time_budget)
                )
                if step % settings.checkpoint_every == 0 or stop_now or step == settings.steps:
                    save(ckpt, True, {})
                    saved_step = step
                    for cb in callbacks:
                        cb.on_checkpoint(step, ckpt)
                if interrupt.requested:
                    raise TrainingInterrupted(step, settings.steps, ckpt, saved_now=True, signum=interrupt.signum)
                if stop_now:
                    stopped = step < settings.steps
                    break
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
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt as exc:  # a second Ctrl-C, or one outside the steps: at once
        kept = ckpt if saved_step is not None else None
        raise TrainingInterrupted(
            saved_step or 0, settings.steps, kept, saved_now=False, signum=interrupt.signum
        ) from exc
    finally:
        bar.close()
    return TrainResult(out, ckpt, step, stopped, elapsed, history, last_check, started_at)
