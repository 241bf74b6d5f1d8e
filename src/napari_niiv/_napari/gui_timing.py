"""How long the plugin's own GUI-thread handlers run: the plugin's share of any stall of the window.

Every handler the plugin connects to a napari, Qt or magicgui event is wrapped in
:func:`gui_handler`; each call's duration goes to :data:`HANDLER_TIMES` (the last
``MAX_CALLS``), which tests and ``benchmarks/bench_interactive.py`` read. The target is a median
under 10 ms and no call over 30 ms, whatever the model is doing: heavy work belongs on a worker.
"""

from __future__ import annotations

import functools
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
MAX_CALLS = 20_000


class HandlerTimes:
    """The durations of the latest handler calls, by handler name (thread-safe)."""

    def __init__(self, maxlen: int = MAX_CALLS) -> None:
        self._calls: deque[tuple[str, float]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def record(self, name: str, seconds: float) -> None:
        with self._lock:
            self._calls.append((name, seconds))

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    def calls(self) -> list[tuple[str, float]]:
        with self._lock:
            return list(self._calls)

    def summary(self) -> dict[str, Any]:
        """``{"calls": n, "median": ms, "max": ms, "slowest": name, "by_handler": {name: {...}}}``."""
        calls = self.calls()
        if not calls:
            return {"calls": 0, "median": None, "max": None, "slowest": None, "by_handler": {}}
        ms = [s * 1e3 for _, s in calls]
        by: dict[str, list[float]] = {}
        for name, s in calls:
            by.setdefault(name, []).append(s * 1e3)
        worst = max(range(len(calls)), key=ms.__getitem__)
        own = max(((m, name) for m, (name, _) in zip(ms, calls, strict=True) if name not in NAPARI_WORK), default=None)
        return {
            "calls": len(calls),
            "median": round(statistics.median(ms), 3),
            "max": round(max(ms), 3),
            "slowest": calls[worst][0],
            # the same without the handlers that only hand a layer to napari (its visual and controls)
            "max_plugin": None if own is None else round(own[0], 3),
            "slowest_plugin": None if own is None else own[1],
            "by_handler": {
                k: {"calls": len(v), "median": round(statistics.median(v), 3), "max": round(max(v), 3)}
                for k, v in sorted(by.items())
            },
        }


HANDLER_TIMES = HandlerTimes()


_nested = threading.local()


# Handlers whose time is napari's own work on a layer or progress bar the plugin hands it (building
# the layer's visual and controls, ~100-150 ms once per layer; a bar in the activity dock, ~100 ms
# once per save or fine-tuning run): reported with the rest, and apart as well.
NAPARI_WORK: set[str] = set()


def napari_work(fn: F) -> F:
    """:func:`gui_handler` for a function that only hands napari a layer or a progress bar
    (:data:`NAPARI_WORK`)."""
    NAPARI_WORK.add(fn.__qualname__)
    return gui_handler(fn)


def gui_handler(fn: F) -> F:
    """Record each call's duration under the function's qualified name. A handler called from
    another is recorded on its own and its time is left out of the caller's, so each row says
    where the time went (e.g. napari's creation of a new layer apart from the update that asks
    for it)."""
    name = fn.__qualname__

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        stack = _nested.__dict__.setdefault("inner", [])
        stack.append(0.0)  # time spent in handlers this one calls
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            total = time.perf_counter() - t0
            inner = stack.pop()
            HANDLER_TIMES.record(name, total - inner)
            if stack:
                stack[-1] += total

    return timed  # type: ignore[return-value]
