"""What the plugin is doing, shown the ways napari users know: napari thread workers (the task
status napari asks about when the window closes), progress bars in napari's activity dock (with
Cancel), and one inline progress bar in the niiv dock.

Long jobs (a background save, fine-tuning) run on their own thread at low priority
(:func:`~napari_niiv.inference.devices.lower_thread_priority`); :func:`follow_job` puts a napari
:class:`~superqt.utils.GeneratorWorker` beside the job that waits for it and yields its progress,
which napari delivers on the GUI thread. The worker's ``quit()`` (napari's cancel, closing the
window) asks the job to stop, and the worker ends when the job has ended, never before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.progress import cancelable_progress
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from .gui_timing import gui_handler, napari_work

POLL_S = 0.1  # how often a follower looks at its job
REFRESH_MS = 200  # how often the inline bar looks at the plugin's work


class JobWorker(GeneratorWorker):
    """A napari thread worker following a job on its own thread: ``quit()`` asks the job to stop
    (``on_quit``) instead of abandoning it, so the worker finishes with the job."""

    on_quit: Callable[[], None] | None = None

    def quit(self) -> None:
        if self.on_quit is not None:
            self.on_quit()


def follow_job(
    name: str,
    start: Callable[[], None],
    join: Callable[[float], bool],
    stop: Callable[[], None],
    snapshot: Callable[[], Any] = lambda: None,
    on_yield: Callable[[Any], None] | None = None,
    on_finished: Callable[[], None] | None = None,
) -> JobWorker:
    """Start a job (``start()``, here and now) and follow it with a napari thread worker named
    ``name``: it yields ``snapshot()`` whenever that changes (``on_yield``, on the GUI thread)
    and finishes (``on_finished``) once ``join(timeout)`` says the job has ended.

    The callbacks are connected before the worker starts: a signal emitted by a worker thread
    while nothing is connected yet is lost, and a job that ends at once (a save refused as it
    opens its store) would then never be seen to finish."""
    start()

    def follow() -> Iterator[Any]:
        last: Any = object()
        while True:
            ended = join(POLL_S)
            now = snapshot()
            if now != last:
                last = now
                yield now
            if ended:
                return

    follow.__qualname__ = follow.__name__ = name  # napari's task status shows the function
    worker = create_worker(follow, _worker_class=JobWorker, _start_thread=False)
    worker.on_quit = stop
    if on_yield is not None:
        worker.yielded.connect(on_yield)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return worker


class CancelableBar(cancelable_progress):
    """A progress bar in napari's activity dock whose Cancel button calls ``cancel_callback`` at
    once (napari's own only calls it while iterating)."""

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


@napari_work
def activity_bar(**options: Any) -> CancelableBar:
    """A :class:`CancelableBar` (``options`` as napari's progress takes them). Its time is napari's:
    its activity dialog builds the bar's widgets and runs Qt's event loop, ~100 ms here."""
    return CancelableBar(**options)


def format_seconds(seconds: float) -> str:
    """1:05, 12:30, 1:02:03."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass(frozen=True)
class Activity:
    """One piece of work for the inline bar: ``total`` 0 means busy without a count; ``cancel``
    (if any) is what the bar's Cancel button does."""

    text: str
    done: int = 0
    total: int = 0
    cancel: Callable[[], None] | None = None
    cancel_tip: str = ""


class ActivityBar(QWidget):
    """One inline progress bar for what niiv is doing now (saving, fine-tuning, lazy tiles, the live
    view: the first of ``sources()``), with a line of text and Cancel where the work can be
    cancelled. It looks every ``REFRESH_MS``; the work itself reports nothing to it."""

    def __init__(self, sources: Callable[[], list[Activity]], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.sources = sources
        self.label = QLabel("niiv: idle")
        self.label.setWordWrap(True)
        self.label.setToolTip("What niiv is doing: saving, fine-tuning, computing lazy tiles or the live view")
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setTextVisible(True)
        self.bar.setFormat("%p%")
        self.bar.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.bar.setToolTip("Progress of the first task named above; napari's activity dock lists each one")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Cancel the task named above")
        self.cancel_button.clicked.connect(self._cancel)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.bar)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.label)
        layout.addLayout(row)
        self.current: Activity | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self.refresh)
        self._timer.start()

    @gui_handler
    def refresh(self) -> None:
        # QProgressBar.setValue and setRange repaint at once, and a synchronous repaint of a widget
        # beside napari's OpenGL canvas flushes the whole window (25-80 ms each under software
        # OpenGL, the slowest call of the plugin's handlers); with updates off while it is set, the
        # bar is repainted once in the window's next ordinary paint instead.
        self.bar.setUpdatesEnabled(False)
        try:
            self._show(self.sources())
        finally:
            self.bar.setUpdatesEnabled(True)

    def _show(self, work: list[Activity]) -> None:
        self.current = work[0] if work else None
        a = self.current
        if a is None:
            self.label.setText("niiv: idle")
            self.bar.setRange(0, 1)
            self.bar.setValue(0)
            self.bar.setFormat("idle")
            self.cancel_button.setEnabled(False)
            self.cancel_button.setToolTip("Cancel the task named above (nothing runs now)")
            return
        more = f" (and {len(work) - 1} more task{'s' if len(work) > 2 else ''})" if len(work) > 1 else ""
        self.label.setText(a.text + more)
        if a.total > 0:
            self.bar.setRange(0, a.total)
            self.bar.setValue(min(a.done, a.total))
            self.bar.setFormat("%p%")
        else:
            # Work of unknown length: a still bar, not Qt's animated "busy" one, which repaints the
            # window continuously (with software OpenGL each repaint recomposes the whole canvas:
            # the live view ran 4-5x slower in the viewer while it animated).
            self.bar.setRange(0, 1)
            self.bar.setValue(0)
            self.bar.setFormat("working...")
        self.cancel_button.setEnabled(a.cancel is not None)
        self.cancel_button.setToolTip(a.cancel_tip or "Cancel the task named above")

    @gui_handler
    def _cancel(self, checked: bool = False) -> None:  # QPushButton.clicked passes checked
        if self.current is not None and self.current.cancel is not None:
            self.current.cancel()
            self.refresh()

    def stop(self) -> None:
        self._timer.stop()
