"""A :class:`~napari_niiv.training.finetune.FineTuneJob` in napari: its callbacks as Qt signals,
and the napari thread worker and activity-dock bar that follow it.

The job calls back on its training thread; emitting a signal of a QObject made on the GUI thread
queues the call there, where the panel may touch its widgets. The job keeps its own thread (it
lowers that thread's priority, and a run stops within one step); :func:`follow_training` puts a
napari worker beside it (napari's task status: closing the window asks, and stops it) and a
progress bar with Cancel in napari's activity dock.
"""

from __future__ import annotations

from qtpy.QtCore import QObject, Signal

from ..training.finetune import FineTuneJob
from .activity import CancelableBar, JobWorker, activity_bar, follow_job


class JobSignals(QObject):
    """Forwards ``job``'s on_step / on_check / on_preview / on_finished to the GUI thread."""

    stepped = Signal(int, float)
    checked = Signal(int, object)
    previewed = Signal(int, object)
    finished = Signal(object)  # a TrainResult, or the exception that ended the run

    def __init__(self, job: FineTuneJob) -> None:
        super().__init__()
        self.job = job
        job.on_step = self.stepped.emit
        job.on_check = self.checked.emit
        job.on_preview = self.previewed.emit
        job.on_finished = self.finished.emit

    def disconnect_all(self) -> None:
        """Drop the signals still to come (the widgets they would update are being deleted). The
        job may run on (a closed dock does not wait for its step): it calls no signal from now on,
        and its callbacks keep this object alive, so that a call it has begun never reaches a
        deleted QObject (which crashed the process)."""
        for signal in (self.stepped, self.checked, self.previewed, self.finished):
            signal.disconnect()

        def ignore(*args: object, _keep: JobSignals = self) -> None:
            pass

        self.job.on_step = self.job.on_check = self.job.on_preview = self.job.on_finished = ignore


def follow_training(job: FineTuneJob, name: str) -> tuple[JobWorker, CancelableBar]:
    """Start ``job`` under a napari thread worker, with a bar of its steps in napari's activity dock
    whose Cancel stops the run after the current step (resumable, like Stop)."""
    bar = activity_bar(
        total=job.settings.steps,
        desc=f"niiv: fine-tuning '{name}'",
        bar_format="{desc}| ETA {remaining}",  # napari's activity dock shows what follows the |
        cancel_callback=job.stop,
    )
    worker = follow_job(f"niiv fine-tuning on '{name}'", job.start, job.join, job.stop)
    return worker, bar
