"""The newest-wins background worker shared by live views and lazy layers: superseded work never
starts or is told to stop, results and errors reach their callbacks, close is prompt, and the
thread yields to the GUI thread."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from napari_niiv.inference.worker import LatestWorker


def until_cancelled(cancelled, limit: float = 5.0) -> bool:
    """Step until ``cancelled()``; True if it turned true before ``limit`` seconds."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if cancelled():
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def worker():
    ready, errors = [], []
    w = LatestWorker(on_ready=ready.append, on_error=errors.append)
    w.ready, w.errors = ready, errors
    yield w
    w.close()


def test_a_superseded_queued_task_never_starts_and_only_the_newest_result_is_ready(worker):
    started, saw_cancel = [], {}
    running, gate = threading.Event(), threading.Event()

    def task(name):
        def run(cancelled):
            started.append(name)
            if name == "a":
                running.set()
                gate.wait(5)
            saw_cancel[name] = cancelled()
            return name

        return run

    a = worker.submit(task("a"))
    assert running.wait(5)
    b = worker.submit(task("b"))  # waits behind a...
    c = worker.submit(task("c"))  # ...and is replaced by c before it starts
    gate.set()
    assert worker.wait_idle(10)
    assert started == ["a", "c"] and b.cancelled()
    assert saw_cancel == {"a": True, "c": False}
    assert worker.ready == ["c"]  # a's result is stale: dropped from the callback...
    assert a.result() == "a" and c.result() == "c"  # ...though its future holds it
    assert worker.errors == []


def test_a_running_task_is_told_to_stop_by_a_newer_one(worker):
    running = threading.Event()
    stopped_in_time = []

    def long(cancelled):
        running.set()
        stopped_in_time.append(until_cancelled(cancelled))
        return "long"

    first = worker.submit(long)
    assert running.wait(5)
    assert not first.done() and worker.busy
    t0 = time.monotonic()
    second = worker.submit(lambda cancelled: "short")
    assert second.result(5) == "short"
    assert time.monotonic() - t0 < 1.0 and stopped_in_time == [True]
    assert worker.ready == ["short"]


def test_errors_reach_the_error_callback_and_the_worker_keeps_serving(worker):
    failed = worker.submit(lambda cancelled: 1 / 0)
    assert isinstance(failed.exception(5), ZeroDivisionError)
    assert worker.wait_idle(5)
    assert len(worker.errors) == 1 and worker.errors[0] is failed.exception()
    assert worker.submit(lambda cancelled: 42).result(5) == 42
    assert worker.wait_idle(5) and worker.ready == [42]


def test_without_an_error_callback_failures_are_logged(caplog):
    w = LatestWorker(name="niiv-test")
    try:
        with caplog.at_level(logging.ERROR, logger="napari_niiv.inference.worker"):
            assert isinstance(w.submit(lambda cancelled: [][1]).exception(5), IndexError)
            assert w.wait_idle(5)
    finally:
        w.close()
    assert any(r.exc_info and r.exc_info[0] is IndexError and "niiv-test" in r.getMessage() for r in caplog.records)


def test_close_stops_a_running_task_within_one_step():
    steps, running = [], threading.Event()

    def long(cancelled):
        running.set()
        while not cancelled() and len(steps) < 1000:  # 10 s if never told
            steps.append(time.sleep(0.01))

    w = LatestWorker()
    w.submit(long)
    assert running.wait(5)
    t0 = time.monotonic()
    assert w.close() is True
    assert time.monotonic() - t0 < 1.0 and w.stopped and len(steps) < 1000
    late = w.submit(lambda cancelled: pytest.fail("nothing runs after close"))
    assert late.cancelled() and not w.busy


def test_close_drops_a_queued_task():
    running, gate, started = threading.Event(), threading.Event(), []

    def stubborn(cancelled):  # ignores cancelled() until the gate opens
        running.set()
        gate.wait(5)

    w = LatestWorker()
    w.submit(stubborn)
    assert running.wait(5)
    queued = w.submit(started.append)
    assert w.close(timeout=0.05) is False  # still inside the stubborn task
    assert queued.cancelled()
    gate.set()
    end = time.monotonic() + 5
    while not w.stopped and time.monotonic() < end:
        time.sleep(0.01)
    assert w.stopped and started == []


def test_a_callback_may_close_its_own_worker():
    w = LatestWorker()
    w.on_ready = lambda result: w.close()
    w.submit(lambda cancelled: None)
    end = time.monotonic() + 5
    while not w.stopped and time.monotonic() < end:
        time.sleep(0.01)
    assert w.stopped


def test_wait_idle_times_out_while_a_task_runs(worker):
    gate = threading.Event()
    worker.submit(lambda cancelled: gate.wait(5))
    assert worker.wait_idle(0.1) is False and worker.busy
    gate.set()
    assert worker.wait_idle(5) is True and not worker.busy


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is a Linux feature")
def test_the_thread_yields_to_the_gui_thread(worker):
    nice = worker.submit(lambda cancelled: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result(5)
    assert nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == os.getpriority(os.PRIO_PROCESS, 0)


def test_a_process_that_exits_while_a_worker_computes_exits_cleanly() -> None:
    """Daemon threads are stopped wherever they are at interpreter exit; one inside a torch
    operation aborted the process ('terminate called without an active exception', exit 134: a
    script closing the viewer while the live view computed). Workers are stopped at exit."""
    script = """
import threading, torch
from napari_niiv.inference.worker import LatestWorker
started = threading.Event()
def busy(cancelled):
    a = torch.randn(512, 512)
    started.set()
    while not cancelled():
        a = torch.tanh(a @ a)
LatestWorker(name="niiv-test").submit(busy)
assert started.wait(60)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "terminate called" not in run.stderr, run.stderr[-2000:]
