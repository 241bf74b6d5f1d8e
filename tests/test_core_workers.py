"""The engine's core workers (separable decoding's runs, one per core at once on CPUs): each worker
computes on one thread while the caller and threads started later keep torch's thread count; the
caller's grad and inference modes hold on them; errors reach the caller; and the engine's decoding
through them is still the model's query."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from napari_niiv.inference.devices import CoreWorkers, _omp_set_num_threads, core_workers, lower_thread_priority
from napari_niiv.inference.engine import PARALLEL_RUNS_HIDDEN, InferenceEngine
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.model import NiivConfig
from tests.conftest import random_model
from tests.test_separable import CASES, exact


@pytest.fixture(autouse=True)
def two_threads():
    """At least two torch threads (another test may have set one), as on any multi-core CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before))
    yield
    torch.set_num_threads(before)


def _workers() -> CoreWorkers:
    if _omp_set_num_threads() is None:
        pytest.skip("no OpenMP runtime of torch's found to limit a worker to one thread")
    workers = core_workers(torch.device("cpu"))
    assert isinstance(workers, CoreWorkers)  # every worker checked that it computes on one thread
    return workers


def test_each_worker_computes_on_one_thread_and_every_other_thread_keeps_torchs_count() -> None:
    workers = _workers()
    threads = torch.get_num_threads()
    seen: dict[int, tuple[str, int]] = {}
    together = threading.Barrier(2)

    def record(i: int) -> None:
        if i < 2:  # the first two items are held by two workers at once
            together.wait(timeout=30)
        torch.ones(64, 64) @ torch.ones(64, 64)  # a real operation, on that worker's own thread
        seen[i] = (threading.current_thread().name, torch.get_num_threads())

    workers(record, list(range(40)))
    assert sorted(seen) == list(range(40))
    assert all(name.startswith("niiv-core") and n == 1 for name, n in seen.values())
    assert seen[0][0] != seen[1][0] and torch.get_num_threads() == threads
    assert core_workers(torch.device("cpu")) is workers  # one pool per process
    assert core_workers(torch.device("meta")) is None  # CPUs only
    # in a fresh process (this one's count may have been set by other tests): a thread started
    # after the workers gets the count a thread started before them got
    code = (
        "import threading, torch\n"
        "from napari_niiv.inference.devices import core_workers\n"
        "def fresh():\n"
        "    n = []; t = threading.Thread(target=lambda: n.append(torch.get_num_threads())); t.start(); t.join()\n"
        "    return n[0]\n"
        "before = fresh(); workers = core_workers(torch.device('cpu'))\n"
        "workers(lambda i: torch.ones(8) + i, list(range(8)))\n"
        "print(before, fresh(), torch.get_num_threads())\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # two threads, whatever earlier tests left in the environment
    env.pop("MKL_NUM_THREADS", None)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    before, after, main = run.stdout.split()
    assert before == after == main


def test_the_callers_modes_hold_on_the_workers_and_errors_reach_the_caller() -> None:
    workers = _workers()
    modes: list[tuple[bool, bool]] = []

    def mode(_: int) -> None:
        modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))

    with torch.inference_mode():
        workers(mode, [0, 1, 2, 3])
    with torch.no_grad():
        workers(mode, [0, 1, 2, 3])
    assert modes[:4] == [(True, False)] * 4 and modes[4:] == [(False, False)] * 4

    done: list[int] = []

    def fail(i: int) -> None:
        if i == 5:
            raise ValueError("item 5")
        time.sleep(0.001)
        done.append(i)

    with pytest.raises(ValueError, match="item 5"):
        workers(fail, list(range(1000)))
    assert len(done) < 999  # the items not yet taken were left

    nested: list[int] = []

    def outer(i: int) -> None:  # a piece that asks for pieces of its own runs them in turn
        workers(nested.append, [i * 10 + j for j in range(3)])

    caller = threading.Thread(target=workers, args=(outer, [0, 1, 2, 3]))
    caller.start()
    caller.join(timeout=60)
    assert not caller.is_alive()  # waiting on workers from a worker would hang here
    assert sorted(nested) == [i * 10 + j for i in range(4) for j in range(3)]


def _on_a_thread(target) -> None:
    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()


def test_a_call_uses_as_many_workers_as_its_caller_has_threads_at_its_callers_priority() -> None:
    """A caller on one torch thread (a dask thread of a threaded batch run, say) runs its pieces
    itself; the workers run a background caller's pieces at its lowered priority."""
    workers = _workers()
    names: list[str] = []

    def one_thread_caller() -> None:
        torch.get_num_threads()
        _omp_set_num_threads()(1)  # this thread alone, as torch's thread settings of a dask thread
        workers(lambda i: names.append(threading.current_thread().name), list(range(8)))

    _on_a_thread(one_thread_caller)
    assert names == [names[0]] * 8 and not names[0].startswith("niiv-core")
    if not sys.platform.startswith("linux"):
        return
    nice: list[int] = []

    def background_caller() -> None:
        lower_thread_priority(7)
        workers(lambda i: nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())), list(range(8)))

    _on_a_thread(background_caller)
    assert nice == [7] * 8


def test_a_failing_call_returns_only_when_no_worker_still_writes() -> None:
    workers = _workers()
    for _ in range(4):  # which worker takes the failing piece varies
        written: list[int] = []
        together = threading.Barrier(2)

        def piece(i: int, written=written, together=together) -> None:
            together.wait(timeout=30)
            if i == 0:
                raise ValueError("piece 0")
            time.sleep(0.2)
            written.append(i)

        with pytest.raises(ValueError, match="piece 0"):
            workers(piece, [0, 1])
        assert written == [1]


def test_the_engine_decodes_a_narrow_mlp_run_by_run_on_the_workers_exactly() -> None:
    """niiv-fast's configuration takes the workers (in fp32 here, to compare to the query exactly);
    the 256-wide v1 does not."""
    model = random_model(NiivConfig.named("fast"))
    assert model.config.mlp_hidden <= PARALLEL_RUNS_HIDDEN
    eng = InferenceEngine(model, InferenceSettings(device="cpu", precision="fp32", alpha=8.0))
    assert eng._parallel is _workers()
    grid = eng.encode(torch.rand(3, 1, 12, 40), 8.0)
    calls: list[int] = []
    workers = eng._parallel

    def counted(fn, items) -> None:
        calls.append(len(items))
        workers(fn, items)

    eng._parallel = counted
    for rows, cols in CASES.values():
        with torch.inference_mode():
            torch.testing.assert_close(
                eng.render(grid, rows, cols), exact(eng.model, grid, rows, cols), atol=3e-6, rtol=0
            )
    assert max(calls) > 2  # the dense views are several runs, shared out
    wide = InferenceEngine(
        random_model(NiivConfig.named("v1")), InferenceSettings(device="cpu", precision="fp32", alpha=8.0)
    )
    assert wide._parallel is None
