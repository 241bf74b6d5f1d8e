"""A :class:`~napari_niiv.training.finetune.FineTuneJob`'s callbacks as Qt signals.

The job calls back on its training thread; emitting a signal of a QObject made on the GUI thread
queues the call there, where the panel may touch its widgets.
"""

from __future__ import annotations

from qtpy.QtCore import QObject, Signal

from ..training.finetune import FineTuneJob


class JobSignals(QObject):
    """Forwards ``job``'s on_step / on_check / on_preview / on_finished to the GUI thread."""

    stepped = Signal(int, float)
    checked = Signal(int, object)
    previewed = Signal(int, object)
    finished = Signal(object)  # a TrainResult, or the exception that ended the run

    def __init__(self, job: FineTuneJob) -> None:
        super().__init__()
        job.on_step = self.stepped.emit
        job.on_check = self.checked.emit
        job.on_preview = self.previewed.emit
        job.on_finished = self.finished.emit

    def disconnect_all(self) -> None:
        """Drop the signals still to come (the widgets they would update are being deleted)."""
        for signal in (self.stepped, self.checked, self.previewed, self.finished):
            signal.disconnect()
