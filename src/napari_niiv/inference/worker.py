"""One background thread where the newest task wins: the home of every "compute what the user looks
at now, off the GUI thread" loop (live views, the lazy layer's tiles).

Modelled on napari's own asynchronous slicer (``napari/components/_layer_slicer.py``): a one-thread
executor whose submissions return :class:`~concurrent.futures.Future` objects, where a newer
submission cancels the work it supersedes, and a *ready* callback receives results. Unlike the
slicer, superseded work that has already started is told to stop too: a task is
``task(cancelled) -> result`` and ``cancelled()`` turns true as soon as a newer task is submitted or
the worker is closed, so a task that checks it between steps ends within one step.

- A task still queued when a newer one arrives never starts (its future is cancelled).
- ``on_ready(result)`` is called, on the worker thread, for a task that returned while it was still
  the newest; results of superseded tasks are dropped (their futures still hold them).
- ``on_error(exc)`` is called, on the worker thread, for a task that raised; the worker keeps serving.
- The thread lowers its priority (:func:`.devices.lower_thread_priority`) so the GUI stays responsive.

Knows nothing of Qt or napari: callers hop back to their GUI thread themselves (a Qt signal).
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from .devices import lower_thread_priority

log = logging.getLogger(__name__)
T = TypeVar("T")
Cancelled = Callable[[], bool]
Progress = Callable[[float], None]  # the fraction of a long computation done, 0 to 1
__all__ = ["Cancelled", "LatestWorker", "Progress"]
_RUNNING: weakref.WeakSet[LatestWorker] = weakref.WeakSet()  # workers whose thread may still run


@atexit.register
def _stop_at_exit() -> None:
    """At interpreter exit daemon threads are stopped wherever they are, and one inside a torch
    operation then aborts the process ("terminate called without an active exception": a script
    that closes the viewer while a live view computes, then ends). Each worker is asked to stop
    and waited for (within one of its steps)."""
    for worker in list(_RUNNING):
        worker.close(timeout=10.0)


class LatestWorker(Generic[T]):
    """Runs submitted tasks one at a time on its own thread; only the newest matters.

    Each user (a live view, a lazy layer) owns one: newest-wins holds per worker.
    """

    def __init__(
        self,
        on_ready: Callable[[T], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        name: str = "niiv-worker",
    ) -> None:
        self.on_ready = on_ready
        self.on_error = on_error
        self._cond = threading.Condition()
        self._queued: tuple[Future[T], Callable[[Cancelled], T], int] | None = None
        self._running: Future[T] | None = None
        self._generation = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        _RUNNING.add(self)

    # -- the caller's side ---------------------------------------------------------------------
    def submit(self, task: Callable[[Cancelled], T]) -> Future[T]:
        """Run ``task(cancelled)`` next, superseding any queued or running task. After
        :meth:`close` nothing runs: the returned future is already cancelled."""
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                future.cancel()
                return future
            self._generation += 1
            if self._queued is not None:
                self._queued[0].cancel()  # never started: dropped
            self._queued = (future, task, self._generation)
            self._cond.notify_all()
        return future

    @property
    def busy(self) -> bool:
        """A task runs or waits to run."""
        with self._cond:
            return self._running is not None or self._queued is not None

    @property
    def stopped(self) -> bool:
        """The thread has ended (after :meth:`close`)."""
        return not self._thread.is_alive()

    def wait_idle(self, timeout: float | None = 60.0) -> bool:
        """Block until no task runs or waits (tests, scripts); True if idle in time."""
        with self._cond:
            return self._cond.wait_for(lambda: self._running is None and self._queued is None, timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop: a queued task is dropped, the running one sees ``cancelled()`` and the thread ends
        within one of its steps. True if the thread ended within ``timeout``."""
        with self._cond:
            self._closed = True
            if self._queued is not None:
                self._queued[0].cancel()
                self._queued = None
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:  # a callback may close its own worker
            self._thread.join(timeout)
        return self.stopped

    # -- the worker thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        lower_thread_priority()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queued is not None or self._closed)
                if self._closed:
                    return
                assert self._queued is not None
                future, task, generation = self._queued
                self._queued = None
                if not future.set_running_or_notify_cancel():  # the caller cancelled it
                    self._cond.notify_all()
                    continue
                self._running = future
            try:
                self._run(future, task, generation)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _run(self, future: Future[T], task: Callable[[Cancelled], T], generation: int) -> None:
        def cancelled() -> bool:
            return self._closed or self._generation != generation

        try:
            result = task(cancelled)
        except BaseException as exc:  # report, keep serving
            self._report(exc)
            future.set_exception(exc)
            return
        if not cancelled() and self.on_ready is not None:
            try:
                self.on_ready(result)
            except BaseException as exc:
                self._report(exc)
        future.set_result(result)

    def _report(self, exc: BaseException) -> None:
        handler: Any = self.on_error
        if handler is None:
            log.error("background task failed on %s", self._thread.name, exc_info=exc)
            return
        try:
            handler(exc)
        except BaseException:
            log.exception("the error callback of %s failed", self._thread.name)
