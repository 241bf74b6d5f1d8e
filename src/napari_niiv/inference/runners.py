"""Where chunk tasks run: this thread, dask's threaded scheduler, or a dask.distributed cluster.

All runners take the same ``run(job, items, on_result)``: ``job(item)`` runs once per item wherever
the runner puts it, and ``on_result`` sees each result on the calling thread as soon as it exists
(progress, ETA). The first failure stops the run and is raised here. Only small results travel
back, so the caller's memory does not grow with the volume.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import NiivInputError

Job = Callable[[Any], Any]
OnResult = Callable[[Any], None]


class ThreadedRunner:
    """dask's local threaded scheduler with ``threads`` items at once; torch's own threads are
    divided among them so the cores are not oversubscribed (1 thread: the model uses every core)."""

    def __init__(self, threads: int = 1) -> None:
        self.workers = max(1, int(threads))
        self.description = f"{self.workers} local thread{'s' if self.workers > 1 else ''}"

    def run(self, job: Job, items: Sequence[Any], on_result: OnResult) -> None:
        import dask
        import torch
        from dask.callbacks import Callback

        # A name, not a token: hashing the job would read every pixel of an in-memory source.
        run = uuid.uuid4().hex
        shared = dask.delayed(job, name=f"niiv-job-{run}")
        tasks = [shared(item, dask_key_name=f"niiv-chunk-{run}-{n}") for n, item in enumerate(items)]
        keys = {t.key for t in tasks}

        class _Report(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if key in keys:
                    on_result(result)

        before = torch.get_num_threads()
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.workers))
        try:
            with _Report():
                dask.compute(*tasks, scheduler="threads", num_workers=self.workers)
        finally:
            torch.set_num_threads(before)


class DistributedRunner:
    """A dask.distributed client: the job is sent to every worker once, items are mapped over the
    cluster and collected as they complete. Workers must see the same files as this process."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.workers = max(1, sum(client.nthreads().values()))
        self.description = f"dask.distributed at {client.scheduler.address} ({self.workers} worker threads)"

    def run(self, job: Job, items: Sequence[Any], on_result: OnResult) -> None:
        from distributed import as_completed

        shared = self.client.scatter(job, broadcast=True, hash=False)
        futures = self.client.map(_call, items, job=shared, pure=False)
        try:
            for fut in as_completed(futures):
                on_result(fut.result())
        finally:
            self.client.cancel(futures)
            self.client.cancel(shared)


def _call(item: Any, job: Job) -> Any:
    return job(item)


@contextmanager
def open_runner(scheduler: str | None = None, workers: int | None = None, threads: int = 1) -> Iterator[Any]:
    """The runner a command line asks for: ``scheduler`` (an address) joins a running dask.distributed
    cluster, ``workers`` starts a LocalCluster of that many processes, otherwise ``threads`` items run
    at once on dask's threaded scheduler."""
    if scheduler and workers:
        raise NiivInputError("give either --scheduler (a running cluster) or --workers (a local one), not both")
    if scheduler or workers:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:  # pragma: no cover - distributed is a dependency
            raise NiivInputError("dask.distributed is not installed: pip install distributed") from exc
        if scheduler:
            try:
                client = Client(scheduler)  # waits distributed.comm.timeouts.connect
            except OSError as exc:
                raise NiivInputError(f"could not reach a dask scheduler at {scheduler} ({exc})") from exc
            with client:
                yield DistributedRunner(client)
            return
        if workers < 1:
            raise NiivInputError(f"--workers {workers}: give at least 1")
        per_worker = max(1, (os.cpu_count() or 1) // workers)
        env = {name: str(per_worker) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        # distributed's nannies set the variables its workers start with (these, and its own
        # pre-spawn ones: OPENBLAS_NUM_THREADS, MALLOC_TRIM_THRESHOLD_, PYTHONHASHSEED...) in this
        # process' own environment before each spawn and leave them there: every process started
        # from it later (a napari session's next job) would inherit them. Those the cluster set are
        # put back at its close, unless something else changed them since.
        before, leaked = dict(os.environ), {}
        try:
            with (
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                    env=env,
                ) as cluster,
                Client(cluster) as client,
            ):
                leaked = {k: v for k, v in os.environ.items() if before.get(k) != v}
                yield DistributedRunner(client)
        finally:
            for name, value in leaked.items():
                if os.environ.get(name) != value:
                    continue
                if name in before:
                    os.environ[name] = before[name]
                else:
                    del os.environ[name]
        return
    if threads < 1:
        raise NiivInputError(f"--threads {threads}: give at least 1")
    yield ThreadedRunner(threads)
