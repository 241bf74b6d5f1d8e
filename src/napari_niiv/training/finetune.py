"""Fine-tuning trained weights on one open volume, as the napari panel does it, without napari.

:class:`FineTuneRequest` holds the plain values a user chose; :func:`fine_tune_job` checks them
and builds the run (settings, training regions and held-out planes, volumes, held-out check,
model card); :class:`FineTuneJob` runs it on a background thread, reports through plain
callbacks and stops cooperatively within one step; :func:`write_card` writes the human-readable
card beside the weights.

A thread, not a process: the volume is already open (often a lazy dask array that a process would
have to reopen), a live preview needs the weights in this process, and the loop stops within one
step. torch releases the GIL in its kernels, so a GUI stays responsive; GPU memory is released
when the run ends. Callbacks run on the training thread: a GUI forwards them to its own.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import torch
from safetensors import safe_open

from ..data.degrade import Degradation, check_alpha, parse_degradations
from ..data.io import Volume
from ..errors import NiivInputError
from ..inference.devices import lower_thread_priority, pick_device
from ..inference.weights import (
    atomic_write,
    load_weights,
    read_metadata,
    recorded_name,
    resolve_weights,
    write_safetensors,
)
from ..model import NiivModel
from ..model.config import NiivConfig
from .regions import Region, TrainingSplit, clip_region, split_training
from .train import (
    HeldOutCheck,
    TrainCallback,
    TrainResult,
    TrainSettings,
    check_output,
    checkpoint_path,
    fine_tune_settings,
    held_out_min_planes,
    train,
)

log = logging.getLogger(__name__)

MAX_NAME = 120  # characters: with '.ckpt.safetensors' and a temporary suffix, within a file name's 255
MAX_CROP = 64  # lateral training crop (px); smaller volumes train on their whole width
# The held-out check scores at most this many of the held-out planes, each in a window of at most
# this many px in y and x: a check then costs about the same on any volume (scoring all of a large
# volume's held-out planes took minutes, before the first step and ten times a run).
MAX_HELD_PLANES = 8
MAX_HELD_SIDE = 128


def weights_name(text: str) -> str:
    """A file-safe weights name; not one ending in ``.ckpt``, which is how a run's checkpoint is
    named (``NAME.ckpt.safetensors``): such weights would be hidden, then overwritten by a run of NAME;
    nor one too long for a file name once the checkpoint's and temporary files' endings are added."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-.")
    if not name:
        raise NiivInputError("give the new weights a name")
    if name.lower().endswith(".ckpt"):
        raise NiivInputError(f"'{name}': names ending in .ckpt are those of training checkpoints; choose another")
    if len(name) > MAX_NAME:
        raise NiivInputError(f"'{name[:20]}...' is {len(name)} characters long; give a name of at most {MAX_NAME}")
    return name


@dataclass(frozen=True)
class StoppedRun:
    """A run as its checkpoint holds it: the step it reached and the settings a Resume must keep."""

    step: int
    steps: int
    lr: float
    alpha: float
    degradation: str
    regions: tuple[Region, ...] | None  # None: a checkpoint without them (not written by fine-tuning)

    @property
    def complete(self) -> bool:
        return self.step >= self.steps


def stopped_run(out: Path) -> StoppedRun | None:
    """The run whose checkpoint lies beside the weights ``out`` (None: there is none); a
    NiivInputError says why a checkpoint cannot be read."""
    ckpt = checkpoint_path(out)
    if not ckpt.exists():
        return None
    meta = read_metadata(ckpt)
    try:
        state, card = json.loads(meta["train_state"]), json.loads(meta.get("card", "{}"))
        settings = state["run"]["settings"]
        regions = card.get("regions")
        return StoppedRun(
            step=int(state["step"]),
            steps=int(settings["steps"]),
            lr=float(settings["lr"]),
            alpha=float(settings["alpha"]),
            degradation=str(settings["degradations"]),
            regions=None if regions is None else tuple(tuple(slice(int(a), int(b)) for a, b in r) for r in regions),
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise NiivInputError(f"{ckpt}: its training state is unreadable ({exc}); Start a new run instead") from exc


def _readable_run(out: Path) -> StoppedRun | None:
    try:
        return stopped_run(out)
    except NiivInputError:
        return None


def resumable(out: Path) -> bool:
    """Whether ``out`` has a run that Resume can continue (an unreadable checkpoint counts: Resume
    says why it cannot)."""
    run = _readable_run(out)
    return checkpoint_path(out).exists() if run is None else not run.complete


def free_name(folder: Path, name: str) -> str:
    """``name``, else ``name-2``, ``name-3``...: the first a new run can be saved under, or whose
    stopped run Resume continues (a default name never points at finished weights, which Start
    would refuse)."""
    match = re.fullmatch(r"(.+)-(\d+)", name)
    base, n = (match[1], int(match[2])) if match else (name, 1)
    candidate = name
    for _ in range(1000):
        out = folder / f"{candidate}.safetensors"
        if not (out.exists() or checkpoint_path(out).exists()) or resumable(out):
            return candidate
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def check_new_weights(out: Path, resume: bool) -> None:
    """Refuse to start a new run over weights or over a run's unfinished checkpoint at ``out``
    (a new run would replace them); a resume needs an unfinished run's checkpoint. The panel's
    words for :func:`~napari_niiv.training.train.check_new_run`'s rule (which ``train()`` applies
    again), with what only the panel says: whether the existing weights' run can be resumed, and
    a complete run refused as nothing to resume before any work."""
    if resume:
        if not checkpoint_path(out).exists():
            raise NiivInputError(f"weights '{out.stem}' have no unfinished run to resume; Start a new run instead")
        run = _readable_run(out)
        if run is not None and run.complete:
            raise NiivInputError(
                f"the run of '{out.stem}' is complete (step {run.step} of {run.steps}): nothing to resume; "
                "Start a new run under another name"
            )
    elif out.exists():
        also = ", or Resume its run" if resumable(out) else ""
        raise NiivInputError(f"weights '{out.stem}' already exist: choose another name{also}")
    elif checkpoint_path(out).exists():
        raise NiivInputError(
            f"'{out.stem}' holds an unfinished run (its checkpoint {checkpoint_path(out).name}): Resume it, "
            "or choose another name"
        )
    elif out.with_suffix(".md").exists():  # not a card of weights here: the user's own file, never replaced
        raise NiivInputError(
            f"the weights folder already holds '{out.stem}.md', with no weights beside it; the run would write "
            "its card there: choose another name, or move that file"
        )


@dataclass(frozen=True, eq=False)
class FineTuneRequest:
    """What to fine-tune on and how, in plain values (the panel collects them from its widgets).

    ``data`` is the full-resolution (z, y, x) array (numpy or dask), ``scale`` its voxel size,
    ``regions`` the parts to learn from in data voxels, ``start_weights`` a registry name or a path,
    ``out`` the new weights file; ``resume`` continues the checkpoint beside ``out``;
    ``degradation`` how this microscope's sections relate to its xy planes (``data.degrade``).
    """

    data: Any
    scale: tuple[float, float, float]
    name: str
    source: str | None
    alpha: float
    start_weights: str
    regions: tuple[Region, ...]
    out: Path
    steps: int = 1000
    minutes: float = 5.0
    lr: float = 1e-4
    device: str = "auto"
    resume: bool = False
    degradation: str = "thick"


def fine_tune_job(request: FineTuneRequest) -> FineTuneJob:
    """Check ``request`` and build its run: raises :class:`NiivInputError` with what to change. A
    resume continues its checkpoint's run with that run's steps, learning rate, alpha, sections,
    regions and architecture, whatever ``request`` says of them (only the time limit and device are new)."""
    if request.resume:
        check_new_weights(Path(request.out), True)
        request = _resumed(request)
    alpha = check_alpha(request.alpha)
    if alpha == 1.0:
        raise NiivInputError(
            f"'{request.name}' has alpha 1: it is already isotropic, so there is nothing to fine-tune for; give the "
            "alpha of anisotropic data (its z voxel size divided by its xy voxel size)"
        )
    if not 0 < request.lr < 0.1:
        raise NiivInputError(f"learning rate {request.lr:g}: give a number such as 1e-4 (0 < lr < 0.1)")
    if isinstance(request.steps, bool) or not isinstance(request.steps, (int, np.integer)) or request.steps < 1:
        raise NiivInputError(f"steps {request.steps!r}: give a whole number of steps, at least one")
    try:
        minutes = float(request.minutes)
    except (TypeError, ValueError):
        minutes = math.nan
    if not (math.isfinite(minutes) and minutes >= 0):  # a negative limit wrote the start weights back as a result
        raise NiivInputError(f"time limit {request.minutes!r} min: give a number of minutes, or 0 for no time limit")
    out = Path(request.out)
    if out.suffix != ".safetensors":  # else weights no list finds, and a card named after the wrong stem
        raise NiivInputError(f"{out}: weights are written as .safetensors; give a file name ending in .safetensors")
    check_output(out)  # a folder in the way, the shipped weights' folder, one that refuses files
    check_new_weights(out, request.resume)
    start = resolve_weights(request.start_weights)
    data = request.data if isinstance(request.data, da.Array) else _lazy(request.data)
    if data.ndim != 3:
        raise NiivInputError(f"'{request.name}' is {data.ndim}D; fine-tuning needs one 3D (z, y, x) volume")
    if np.dtype(data.dtype).kind not in "uif":
        raise NiivInputError(
            f"'{request.name}' has pixel type {data.dtype}; fine-tuning needs an integer or floating-point volume"
        )
    try:
        scale = tuple(float(v) for v in request.scale)
    except (TypeError, ValueError):
        scale = ()
    if len(scale) != 3 or not all(math.isfinite(v) and v != 0 for v in scale):  # napari flips by a negative scale
        raise NiivInputError(f"'{request.name}': voxel size {request.scale!r} needs three numbers (z, y, x), not 0")
    # clipped to the volume, as the panel clips its boxes: one past the edge held out planes of its own,
    # unclipped size, and the run failed on its thread scoring a held-out part of '0 z planes'
    regions = [clip_region(r, data.shape) for r in request.regions]
    kinds = parse_degradations(request.degradation)
    if len(kinds) != 1:
        raise NiivInputError(f"fine-tuning learns one degradation (thick, thin or psf), got {request.degradation!r}")
    degradation = kinds[0]
    settings = fine_tune_settings(
        alpha,
        steps=int(request.steps),
        minutes=minutes,
        lr=float(request.lr),
        device=str(pick_device(request.device)),
        crop=_crop(data.shape, alpha, request.name, regions),
    )
    settings = replace(settings, degradations=str(degradation))
    split = split_training(regions, settings.crop, alpha)
    _check_fits(start, split.held_out, request.name)
    _check_tall(split.held_out, alpha, request.name)
    _check_blur(degradation, settings.crop, split.held_out, alpha, request.name)
    volumes = [Volume(data[r], voxel_size=scale, name=request.name) for r in split.regions]  # type: ignore[arg-type]

    def check() -> HeldOutCheck:  # read and scored on the training thread
        # held-out xy planes, degraded in-plane as training degrades them
        planes = split.held_out[0]
        what = f"the part held out to check the run (planes z {planes.start}-{planes.stop - 1})"
        held = np.asarray(data[scored_part(data, split.held_out, alpha)])
        return HeldOutCheck([np.transpose(held, (1, 0, 2))], alpha, degradation=degradation, what=what)

    previous = previous_card(out) if request.resume else {}
    card = {
        "source_layer": request.name,
        "source": request.source,
        "regions": [[[s.start, s.stop] for s in r] for r in split.regions],
        "held_out_planes": [split.held_out[0].start, split.held_out[0].stop],
        # the first run's start weights: a resume starts from its own checkpoint, whatever is picked now
        "started_from": previous.get("started_from", recorded_name(request.start_weights)),
    }
    job = FineTuneJob(volumes, settings, out, split, init=start, resume=request.resume, held_out=check, card=card)
    job.previous_runs = list(previous.get("runs", []))
    if isinstance(previous.get("held_out_start"), dict):  # the first run's score of its start weights
        job.start_check = previous["held_out_start"]
    return job


def _resumed(request: FineTuneRequest) -> FineTuneRequest:
    """``request`` with the settings of the stopped run it resumes (any other setting was refused,
    as 'another run', after the held-out check had run; weights of another architecture as well)."""
    out = Path(request.out)
    run = _readable_run(out)
    if run is None:  # an unreadable checkpoint: the run says why, on its thread
        return request
    return replace(
        request,
        steps=run.steps,
        lr=run.lr,
        alpha=run.alpha,
        degradation=run.degradation,
        regions=run.regions if run.regions is not None else request.regions,
        start_weights=str(checkpoint_path(out)),  # its architecture; the card keeps the first run's start
    )


def _check_fits(start: Path, held: Region, name: str) -> None:
    """Refuse, before the run starts, a held-out part narrower in x than the start weights'
    receptive field: its check could not score them (the run failed after starting, with a message
    about a '6x20 px' volume). Weights whose description is unreadable are left to load_weights."""
    try:
        config = NiivConfig.from_dict(json.loads(read_metadata(start)["config"]))
    except (NiivInputError, KeyError, ValueError, TypeError):
        return
    need, width = config.receptive_radius + 1, held[2].stop - held[2].start
    if width < need:
        raise NiivInputError(
            f"'{name}': the part held out to check the run is {width} px wide in x, and the start weights "
            f"({start.stem}) need at least {need} (their receptive field): learn from a wider volume or box, "
            "or start from weights with a smaller receptive field (niiv-fast's is the smallest)"
        )


def _check_tall(held: Region, alpha: float, name: str) -> None:
    """Refuse, before the run starts, a held-out part too short in y for its check, which pools
    its xy planes by alpha along y: a 12 px tall volume started, scored nothing and failed on the
    training thread with '... has 12 z plane(s) (shape (12, 3, 96))', naming the wrong axis."""
    need, height = held_out_min_planes(alpha), held[1].stop - held[1].start
    if height < need:
        raise NiivInputError(
            f"'{name}': the part held out to check the run is {height} px tall in y; its check pools the xy planes "
            f"by alpha {alpha:g} along y and needs at least {need} px: learn from a taller volume or box"
        )


def _check_blur(degradation: Degradation, crop: int, held: Region, alpha: float, name: str) -> None:
    """Refuse, before the run starts, a psf wider than the px its sections are simulated over (the
    training crop, the held-out window): the run started, scored the start weights, then failed on
    its thread advising 'a larger crop or cube', which the panel has no control for."""
    side = min(held[2].stop - held[2].start, max(MAX_HELD_SIDE, held_out_min_planes(alpha)))
    span = min(crop, side)
    try:
        degradation.check_extent(span, alpha)
    except NiivInputError:
        raise NiivInputError(
            f"psf FWHM {degradation.thickness(alpha):g} xy px is wider than the {span} px over which fine-tuning on "
            f"'{name}' simulates its sections (the training crop): every section would be nearly the same blur "
            f"of the whole; give the FWHM your microscope has, at most {span} (a few xy px to a few tens)"
        ) from None


def _crop(shape: tuple[int, ...], alpha: float, name: str, regions: Sequence[Region] = ()) -> int:
    """The lateral training crop: MAX_CROP, or the whole width of a smaller volume or of the widest
    region to learn from (boxes narrower than MAX_CROP train as a volume that narrow does), and at
    least the two sections that a crop degraded by ``alpha`` must keep (alpha above 32 needs larger
    crops)."""
    need = math.ceil(2 * alpha - 1e-9)
    sides = [(r[0].stop - r[0].start, r[1].stop - r[1].start, r[2].stop - r[2].start) for r in regions]
    # regions clipped to nothing (drawn outside the volume) are split_training's to refuse, in its words
    widest = max((min(y, x) for z, y, x in sides if min(z, y, x) > 0), default=None)
    crop = min(max(MAX_CROP, need), *(int(s) for s in shape[1:]), *(() if widest is None else (widest,)))
    if crop < need:
        if widest is not None and widest < min(int(s) for s in shape[1:]):
            raise NiivInputError(
                f"the widest region to learn from in '{name}' is {widest} px across in xy; fine-tuning at alpha "
                f"{alpha:g} needs at least {need}x{need} (each training crop is pooled by alpha into two sections or "
                "more): draw larger boxes, or zoom out"
            )
        raise NiivInputError(
            f"'{name}' is {shape[1]}x{shape[2]} px in xy; fine-tuning at alpha {alpha:g} needs at least "
            f"{need}x{need} (each training crop is pooled by alpha into two sections or more)"
        )
    return crop


def scored_part(data: Any, held: Region, alpha: float) -> tuple[Any, slice, slice]:
    """The part of the held-out planes ``held`` that the check scores: at most MAX_HELD_PLANES planes
    spread over them and, in y and x, a window of MAX_HELD_SIDE px (or what alpha needs) where the
    middle one of those planes has the most detail, so that a check neither costs minutes on a large volume
    nor scores empty background. Every held-out plane stays out of training either way."""
    zs, ys, xs = held
    count = min(MAX_HELD_PLANES, zs.stop - zs.start)
    planes = sorted(set(np.linspace(zs.start, zs.stop - 1, count).round().astype(int).tolist()))
    sides = [min(s.stop - s.start, max(MAX_HELD_SIDE, held_out_min_planes(alpha))) for s in (ys, xs)]
    if sides == [ys.stop - ys.start, xs.stop - xs.start]:
        return planes, ys, xs
    middle = np.asarray(data[planes[len(planes) // 2], ys, xs], dtype=np.float64)
    # detail: summed differences between neighbours, highest where the window is all texture (a
    # window's spread of values would favour one half empty, half not)
    detail = np.zeros_like(middle)
    detail[1:, :] += np.abs(np.diff(middle, axis=0))
    detail[:, 1:] += np.abs(np.diff(middle, axis=1))
    summed = np.pad(detail.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    starts = [_window_starts(s.stop - s.start, side) for s, side in zip((ys, xs), sides, strict=True)]

    def window_detail(c: tuple[int, int]) -> float:
        (y0, x0), (y1, x1) = c, (c[0] + sides[0], c[1] + sides[1])
        return float(summed[y1, x1] - summed[y0, x1] - summed[y1, x0] + summed[y0, x0])

    y0, x0 = max(((y, x) for y in starts[0] for x in starts[1]), key=window_detail)
    return planes, slice(ys.start + y0, ys.start + y0 + sides[0]), slice(xs.start + x0, xs.start + x0 + sides[1])


def _window_starts(size: int, side: int) -> list[int]:
    """Starts of windows of ``side`` px over ``size`` px, half a window apart, the last at the end."""
    return sorted({*range(0, size - side + 1, max(1, side // 2)), size - side})


class _Uncopied:
    """An array as :func:`dask.array.from_array` reads it without copying it first: it copies
    anything with a ``copy`` method, which for a layer in memory is a second volume, made on the
    GUI thread (0.5 s for 200 MB). Reads go to the layer's own data, as for a lazy layer."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.shape, self.dtype, self.ndim = tuple(data.shape), np.dtype(data.dtype), len(data.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self.data[index])


def _lazy(data: Any) -> da.Array:
    """``data`` (numpy, zarr) as a dask array, neither copied nor hashed (``name=False``: dask
    would otherwise hash every voxel to name it)."""
    return da.from_array(_Uncopied(data), chunks="auto", name=False, asarray=True)


def previous_card(out: Path) -> dict[str, Any]:
    """The card of the run a resume continues: the weights it saved (with its runs and why each
    ended), else its checkpoint; {} when neither can be read."""
    for path in (out, checkpoint_path(out)):
        try:
            card = json.loads(read_metadata(path).get("card", "{}"))
        except (NiivInputError, ValueError):
            continue
        if isinstance(card, dict):
            return card
    return {}


def end_reason(result: TrainResult, settings: TrainSettings, stop_requested: bool) -> str:
    """Why a run ended: all its steps done, stopped by the user, or its time limit."""
    if result.steps_done >= settings.steps:
        return "complete"
    if stop_requested:
        return "stopped by the user"
    if settings.time_budget is not None and result.seconds >= settings.time_budget:
        return f"time limit of {settings.time_budget / 60:g} min reached"
    return "stopped early"


def amend_card(path: Path, extra: dict[str, Any]) -> None:
    """Add ``extra`` to the card in the metadata of the weights file ``path`` (rewritten atomically)."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    meta["card"] = json.dumps({**json.loads(meta.get("card", "{}")), **extra})
    atomic_write(path, lambda tmp: write_safetensors(tensors, Path(tmp), meta))


class _Forward(TrainCallback):
    def __init__(self, job: FineTuneJob) -> None:
        self.job = job

    def on_step(self, step: int, loss: float, lr: float) -> None:
        if self.job.first_step is None:
            self.job.first_step = step - 1
        self.job.on_step(step, loss)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.job.on_check(step, dict(metrics))

    def on_preview(self, step: int, model: NiivModel) -> None:
        if self.job.on_preview is not _ignore:
            self.job.on_preview(step, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})

    def should_stop(self) -> bool:
        return self.job.stop_requested.is_set()


def _ignore(*args: Any) -> None:
    return None


class StoppedBeforeFirstStep(NiivInputError):
    """Stop came before the run's first step (while the start weights were scored): it ends
    there, writing nothing, instead of training one step to save it (the training-panel audit)."""

    def __init__(self, resumed: bool) -> None:
        then = "the stopped run is as it was: Resume continues it" if resumed else "Start trains again"
        super().__init__(f"stopped before the first step: nothing was written; {then}")


class FineTuneJob:
    """One run of :func:`napari_niiv.training.train.train` on a background thread.

    Set the callbacks before :meth:`start`; they run on the training thread:
    ``on_step(step, loss)``; ``on_check(step, metrics)`` with the held-out scores (step 0: the
    start weights, the bar fine-tuning must clear; ``bilinear_cf_psnr`` is bilinear's there);
    ``on_preview(step, state)`` with a CPU copy of the in-training state dict;
    ``on_finished(result)`` last, with the :class:`TrainResult` (its model card written) or the
    exception that ended the run (a :class:`NiivInputError`: a refusal, which says what to do).
    :meth:`stop` ends the run after the current step with a checkpoint and weights written, so it
    can be resumed; before the first step, with nothing written (:class:`StoppedBeforeFirstStep`).

    When the run ends, :attr:`ended` says why ("complete", "stopped by the user", "time limit of
    5 min reached", "refused: ..." or "error: ..."), and the weights' card gets ``ended`` and ``runs``: every run
    of these weights (resumes included) with the steps it covered and why it ended.
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        settings: TrainSettings,
        out: Path,
        split: TrainingSplit,
        *,
        init: Path | None,
        resume: bool,
        held_out: HeldOutCheck | Callable[[], HeldOutCheck] | None,
        card: dict[str, Any],
    ) -> None:
        self.volumes, self.settings, self.out, self.split = list(volumes), settings, Path(out), split
        self.init, self.resume, self.card = init, resume, card
        self._held_out = held_out  # a check, or how to make it (on the training thread: it reads and scores)
        self.on_step: Callable[[int, float], None] = _ignore
        self.on_check: Callable[[int, dict[str, float]], None] = _ignore
        self.on_preview: Callable[[int, dict[str, torch.Tensor]], None] = _ignore
        self.on_finished: Callable[[TrainResult | BaseException], None] = _ignore
        self.stop_requested = threading.Event()
        self.result: TrainResult | BaseException | None = None
        self.ended: str | None = None
        self.previous_runs: list[dict[str, Any]] = []  # the runs before this resume, from the card
        self.first_step: int | None = None  # the step this run started after
        # the held-out scores of the start weights (the first run's, on a resume): what the run must beat
        self.start_check: dict[str, float] | None = None
        self._thread = threading.Thread(target=self._run, name="niiv-train", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stop_requested.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def held_out(self) -> HeldOutCheck | None:
        """The held-out check, made on first use (the training thread's)."""
        if callable(self._held_out) and not isinstance(self._held_out, HeldOutCheck):
            self._held_out = self._held_out()
        return self._held_out

    def _run(self) -> None:
        lower_thread_priority()
        try:
            held_out = self.held_out()
            if held_out is not None and self.init is not None and not self.resume:
                self.start_check = dict(held_out(load_weights(self.init).model))
                self.on_check(0, dict(self.start_check))
            if self.stop_requested.is_set():  # while the held-out planes were read and scored
                raise StoppedBeforeFirstStep(self.resume)
            result = train(
                self.volumes,
                self.settings,
                self.out,
                init=self.init,
                resume=self.resume,
                z_ranges=self.split.z_ranges,
                held_out=held_out,
                callbacks=[_Forward(self)],
                progress=False,
                card=self.card,
            )
            self.ended = end_reason(result, self.settings, self.stop_requested.is_set())
            start = result.steps_done if self.first_step is None else self.first_step
            runs = [*self.previous_runs, {"steps": [start, result.steps_done], "ended": self.ended}]
            extra: dict[str, Any] = {"ended": self.ended, "runs": runs}
            if self.start_check is not None:
                extra["held_out_start"] = self.start_check
            amend_card(result.weights, extra)
            write_card(result.weights, result)
            self.result = result
        except StoppedBeforeFirstStep as exc:  # nothing trained, nothing written
            self.result, self.ended = exc, "stopped by the user before the first step"
        except NiivInputError as exc:  # a refusal (data, a resume of another run): it says what to do
            log.info("niiv training refused: %s", exc)
            self.result, self.ended = exc, f"refused: {exc}"
        except BaseException as exc:  # reported through on_finished
            log.error("niiv training failed", exc_info=exc)
            self.result, self.ended = exc, f"error: {exc}"
            self._note_error(exc)
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.on_finished(self.result)

    def _note_error(self, exc: BaseException) -> None:
        """Say in the human-readable card that the last run failed (the weights file, if any, is
        still the one of the run before)."""
        md = self.out.with_suffix(".md")
        ckpt = checkpoint_path(self.out)
        if not (md.exists() or self.out.exists() or ckpt.exists()):
            return  # nothing was written: a card alone would describe weights that do not exist
        try:
            text = md.read_text() if md.exists() else f"# {self.out.stem}\n\n"
            after = f"; resume from the checkpoint {ckpt.name}" if ckpt.exists() else ""
            text += f"- last run ended: error: {exc}{after}\n"
            atomic_write(md, lambda tmp: Path(tmp).write_text(text))
        except OSError as write_error:  # the folder itself may be what failed
            log.error("could not note the error in %s: %s", md, write_error)


def write_card(weights: Path, result: TrainResult) -> None:
    """A human-readable model card beside user weights (the same facts are in the file's metadata):
    the weights the first run started from, every run with its steps and why it ended."""
    card_text = read_metadata(weights).get("card", "{}")
    card = json.loads(card_text)
    held = result.held_out or {}
    runs = card.get("runs") or []
    ended = card.get("ended") or ("stopped early" if result.stopped_early else "complete")
    lines = [
        f"# {weights.stem}",
        "",
        "Fine-tuned with napari-niiv.",
        "",
        f"- card: `{card_text}`",
        f"- started from: {card.get('started_from') or card.get('fine_tuned_from') or 'scratch'}",
        f"- steps: {result.steps_done} ({ended}), {result.seconds:.0f} s",
        *(f"- run {i}: steps {r['steps'][0]}-{r['steps'][1]}, {r['ended']}" for i, r in enumerate(runs, 1)),
        f"- final loss (mean of last 50 steps): {np.mean([h['loss'] for h in result.history[-50:]]):.4f}"
        if result.history
        else "- final loss: n/a",
    ]
    if held:
        lines.append(
            f"- held-out xy planes: CF-PSNR {held['cf_psnr']:.2f} dB ({held['cf_psnr_gain']:+.2f} vs bilinear), "
            f"PSNR {held['psnr']:.2f} dB ({held['psnr_gain']:+.2f})"
        )
    start = card.get("held_out_start")
    if held and isinstance(start, dict) and "cf_psnr" in start:  # whether fine-tuning helped this volume
        lines.append(
            f"- the start weights there: CF-PSNR {start['cf_psnr']:.2f} dB, PSNR {start['psnr']:.2f} dB; "
            f"fine-tuning gained {held['cf_psnr'] - start['cf_psnr']:+.2f} dB CF-PSNR, "
            f"{held['psnr'] - start['psnr']:+.2f} dB PSNR"
        )
    text = "\n".join(lines) + "\n"
    atomic_write(weights.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text))
