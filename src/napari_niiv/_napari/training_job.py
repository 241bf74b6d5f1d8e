"""One fine-tuning run on a background thread, reporting to the GUI thread through Qt signals.

A thread, not a process: the volume is already open in the viewer (often a lazy dask array that a
process would have to reopen), the live preview needs the weights in this process, and the core
loop stops cooperatively within one step. torch releases the GIL in its kernels, so the GUI stays
responsive; GPU memory is released when the run ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from qtpy.QtCore import QObject, Signal

from ..inference.devices import lower_thread_priority
from ..inference.weights import load_weights
from ..model import NiivModel
from ..training.train import HeldOutCheck, TrainCallback, TrainResult, TrainSettings, train

log = logging.getLogger(__name__)


class _Report(TrainCallback):
    def __init__(self, job: TrainingJob) -> None:
        self.job = job

    def on_step(self, step: int, loss: float, lr: float) -> None:
        self.job.stepped.emit(step, loss)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.job.checked.emit(step, dict(metrics))

    def on_preview(self, step: int, model: NiivModel) -> None:
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.job.previewed.emit(step, state)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.job.checkpointed.emit(step, str(path))

    def should_stop(self) -> bool:
        return self.job.stop_requested.is_set()


class TrainingJob(QObject):
    """Runs :func:`napari_niiv.training.train.train` once; ``stop()`` ends it after the current step with
    a checkpoint and weights written, so it can be resumed."""

    stepped = Signal(int, float)
    checked = Signal(int, object)
    previewed = Signal(int, object)
    checkpointed = Signal(int, str)
    finished = Signal(object)  # a TrainResult, or the exception that ended the run

    def __init__(
        self,
        volumes: Sequence[Any],
        settings: TrainSettings,
        out: Path,
        *,
        init: Path | None,
        resume: bool,
        z_ranges: Sequence[tuple[int, int]],
        held_out: HeldOutCheck | None,
        card: dict[str, Any],
    ) -> None:
        super().__init__()
        self.stop_requested = threading.Event()
        self.result: TrainResult | BaseException | None = None
        self._kwargs = dict(init=init, resume=resume, z_ranges=list(z_ranges), held_out=held_out, card=card)
        self._args = (list(volumes), settings, out)
        self._thread = threading.Thread(target=self._run, name="niiv-train", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stop_requested.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        lower_thread_priority()
        try:
            held_out, init = self._kwargs["held_out"], self._kwargs["init"]
            if held_out is not None and init is not None and not self._kwargs["resume"]:
                # Where the start weights stand on the held-out planes: the bar fine-tuning must clear.
                self.checked.emit(0, held_out(load_weights(init).model))
            self.result = train(*self._args, callbacks=[_Report(self)], progress=False, **self._kwargs)
        except BaseException as exc:  # reported to the user on the GUI thread
            log.error("niiv training failed", exc_info=exc)
            self.result = exc
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.finished.emit(self.result)
