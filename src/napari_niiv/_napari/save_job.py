"""Save isotropic volume...: the whole reconstruction of a layer, written as a resumable OME-Zarr
pyramid in the background while the window stays usable.

:class:`SaveJob` runs :func:`~napari_niiv.inference.export.write_isotropic` (``resume=True``) on its
own low-priority thread and can be cancelled between chunks; a cancelled or crashed save leaves
``OUT.partial``, and the same save again (same path, settings and weights: the store's fingerprint
checks that) continues it. :class:`BackgroundSave` is the GUI side: a napari thread worker that
follows the job, a progress bar with ETA and Cancel in napari's activity dock, and the status line.
napari's File > Save of a (small) lazy layer is unchanged: it runs in napari's save call.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_warning

from ..data.normalise import fit_normalisation
from ..errors import NiivInputError
from ..inference.devices import lower_thread_priority
from ..inference.export import DEFAULT_CHUNKS, write_isotropic
from ..inference.geometry import OutputGeometry
from ..inference.reconstructor import BlockReconstruction
from ..inference.settings import InferenceSettings
from ..inference.store import WriteCancelled, WriteReport, outside_zarr_stores, partial_path
from ..model import NiivModel
from .activity import Activity, JobWorker, activity_bar, follow_job, format_seconds
from .gui_timing import gui_handler
from .layer_view import layer_source

log = logging.getLogger(__name__)
PERMILLE = 1000  # progress bars count tenths of a percent: voxel counts overflow Qt's int range


@dataclass(frozen=True)
class SaveProgress:
    """Where a save stands: voxels ``done`` of ``total`` over all pyramid levels, ``first`` of them
    found done by an earlier run, ``elapsed`` seconds since this run began writing."""

    stage: str  # "preparing" (normalisation, input fingerprint), "writing", "done"
    done: int = 0
    total: int = 0
    first: int = 0
    elapsed: float = 0.0

    @property
    def permille(self) -> int:
        return int(PERMILLE * self.done / self.total) if self.total else 0

    @property
    def eta(self) -> float | None:
        """Seconds left at this run's average rate; None until some of this run's work is done."""
        new = self.done - self.first
        return None if new <= 0 or self.elapsed <= 0 else (self.total - self.done) * self.elapsed / new


class SaveJob:
    """Write the isotropic reconstruction of ``data`` to ``out`` on a background thread.

    The normalisation is fitted on that thread (it reads sampled chunks of the input), exactly as
    the lazy layer fits it, so a save of a layer matches what the lazy layer shows. ``result`` is
    the :class:`WriteReport`, or the exception that ended the run (:class:`WriteCancelled` when
    cancelled).
    """

    def __init__(
        self,
        out: Path,
        data: Any,
        model: NiivModel,
        settings: InferenceSettings,
        geometry: OutputGeometry,
        dtype: Any,
        input_id: str,
        chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
        origin: str | None = None,
        contrast: tuple[float, float] | None = None,
    ) -> None:
        self.out, self.data, self.model, self.settings = Path(out), data, model, settings
        self.geometry, self.dtype, self.input_id, self.chunks = geometry, np.dtype(dtype), input_id, chunks
        self.origin = origin  # the file the layer was read from: a resume refuses it once edited
        self.contrast = contrast  # the display window written: the layer's contrast limits
        self.result: WriteReport | BaseException | None = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._progress = SaveProgress("preparing")
        self._t0: float | None = None
        self._thread = threading.Thread(target=self._run, name="niiv-save", daemon=True)

    @property
    def partial(self) -> Path:
        return partial_path(self.out)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Stop after the chunks being written (the partial store stays, resumable)."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it has ended (or never started)."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def progress(self) -> SaveProgress:
        with self._lock:
            p = self._progress
        if p.stage == "writing" and self._t0 is not None:
            return SaveProgress(p.stage, p.done, p.total, p.first, time.perf_counter() - self._t0)
        return p

    def _on_progress(self, done: int, total: int) -> None:
        with self._lock:
            if self._t0 is None:  # the first call: what earlier runs wrote
                self._t0 = time.perf_counter()
                self._progress = SaveProgress("writing", done, total, done)
            else:
                self._progress = SaveProgress("writing", done, total, self._progress.first)

    def _run(self) -> None:
        lower_thread_priority()
        try:
            norm = fit_normalisation(self.data)
            job = BlockReconstruction(
                self.data, norm, self.model, self.settings, self.geometry, self.dtype, origin=self.origin
            )
            self.result = write_isotropic(
                self.out,
                job,
                chunks=self.chunks,
                contrast=self.contrast or (norm.low, norm.high),
                resume=True,
                input_id=self.input_id,
                on_progress=self._on_progress,
                cancelled=self._cancel.is_set,
            )
        except BaseException as exc:  # reported by the GUI side
            if not isinstance(exc, (WriteCancelled, NiivInputError)):
                log.error("niiv save failed", exc_info=exc)
            self.result = exc
        with self._lock:
            p = self._progress
            self._progress = SaveProgress("done", p.done, p.total, p.first, p.elapsed)


def default_save_path(layer: Any) -> Path:
    """What the save dialog proposes: beside the layer's file when it came from one, else in the home
    folder; the home folder too for a sample (its file lies in the shared data folder or niiv's download
    cache, no place for results) and for a folder that takes no new files. A name already taken gets
    -2, -3...: the dialog proposes a store it can write (an unfinished one, OUT.partial, is proposed as
    it is, to continue it)."""
    source = layer_source(layer)
    sample = getattr(getattr(layer, "source", None), "sample", None)  # napari's Open Sample sets it
    folder = Path(source).parent if source and "://" not in source and sample is None else Path.home()
    folder = outside_zarr_stores(folder)  # read from data.ome.zarr/0: beside the store, not in it
    if not os.access(folder, os.W_OK):
        folder = Path.home()
    stem = re.sub(r"[/\\]", "_", str(layer.name)) + "-isotropic"  # a layer name may hold a slash
    path, n = folder / f"{stem}.ome.zarr", 2
    while path.exists() or path.is_symlink():
        path, n = folder / f"{stem}-{n}.ome.zarr", n + 1
    return path


def as_store_path(path: str | Path) -> Path:
    """An OME-Zarr path: ``.ome.zarr`` added unless it ends in ``.zarr``; a path with no file name
    (empty, ``/``, ``..``) is refused with what to do."""
    p = Path(path)
    if p.name in ("", ".", ".."):
        raise NiivInputError(
            f"Save isotropic volume...: {str(path)!r} names no store; give a file name such as out.ome.zarr"
        )
    return p if p.name.endswith(".zarr") else p.with_name(p.name + ".ome.zarr")


class BackgroundSave:
    """The GUI side of one :class:`SaveJob`: a napari worker following it, a cancellable progress bar
    with ETA in napari's activity dock, and ``on_status``/``on_done`` on the GUI thread."""

    def __init__(
        self,
        job: SaveJob,
        name: str,
        on_status: Callable[[str], None],
        on_done: Callable[[BackgroundSave], None],
    ) -> None:
        self.job, self.name, self.on_status, self.on_done = job, name, on_status, on_done
        self.yields = 0
        self._bar_started = False
        self._shut_down = False
        self.bar = activity_bar(
            total=PERMILLE,
            desc=f"niiv: saving '{name}'",
            smoothing=0,  # ETA from this run's average rate
            bar_format="{desc}| ETA {remaining}",  # napari's activity dock shows what follows the |
            cancel_callback=self.cancel,
        )
        self.worker: JobWorker | None = None

    def start(self) -> None:
        """Start the job and its follower. Separate from construction so that whoever keeps this
        save has it before ``on_done`` can run (a save refused at once ends within milliseconds)."""
        self.on_status(f"Save isotropic volume...: writing {self.job.out} in the background")
        job = self.job
        self.worker = follow_job(
            f"niiv save of '{self.name}'",
            job.start,
            job.join,
            job.cancel,
            job.progress,
            on_yield=self._on_progress,
            on_finished=self._on_finished,
        )

    @property
    def running(self) -> bool:
        return self.bar is not None

    def cancel(self) -> None:
        if self.running and not self.job.cancel_requested:
            self.job.cancel()
            self.on_status(f"cancelling the save of '{self.name}' after the chunk being written...")

    def shutdown(self, timeout: float = 10.0) -> None:
        """The dock is closing: cancel (the partial store stays resumable), say so in napari's
        notifications (the dock's status line is going), wait up to ``timeout`` for the chunk being
        written (0: not at all; the job stops at its next chance on its own thread), and drop the
        callbacks into widgets being deleted. Once: the widget's deletion asks again after its dock
        closed, and must not then wait."""
        if self._shut_down:
            return
        self._shut_down = True
        self.on_status = lambda text: None
        self.on_done = lambda save: None
        if self.running and self.job.running and not self.job.cancel_requested:
            show_warning(
                f"niiv: closing the dock stopped the save of '{self.name}' to {self.job.out}; {self.job.partial} "
                "keeps what was written: Save isotropic volume... to the same path continues it"
            )
        self.job.cancel()
        if timeout > 0:
            self.job.join(timeout)
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def text(self, p: SaveProgress) -> str:
        if self.job.cancel_requested:
            return f"cancelling the save of '{self.name}' after the chunk being written..."
        if p.stage == "preparing":
            return f"saving '{self.name}' to {self.job.out.name}: preparing..."
        eta = p.eta
        resumed = f", {100 * p.first / p.total:.0f} % from an earlier run" if p.first and p.total else ""
        return f"saving '{self.name}' to {self.job.out.name}: {p.permille / 10:.1f} %{resumed}, " + (
            f"ETA {format_seconds(eta)}" if eta is not None else "ETA after the first planes"
        )

    def activity(self) -> Activity:
        p = self.job.progress()
        return Activity(
            self.text(p),
            p.permille,
            PERMILLE if p.stage != "preparing" else 0,
            self.cancel,
            "Stop the save after the chunk being written; saving again to the same path continues it",
        )

    @gui_handler
    def _on_progress(self, p: SaveProgress | None) -> None:
        self.yields += 1
        if p is None or p.stage != "writing" or self.bar is None:
            return
        bar = self.bar
        if not self._bar_started:  # what earlier runs wrote is not this run's speed: ETA from here
            self._bar_started = True
            bar.n = bar.initial = int(PERMILLE * p.first / p.total) if p.total else 0
            bar.start_t = time.time() - p.elapsed
        if p.permille > bar.n:
            bar.update(p.permille - bar.n)
        else:
            bar.refresh()

    @gui_handler
    def _on_finished(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        result, out = self.job.result, self.job.out
        if isinstance(result, WriteReport):
            resumed = f", {result.chunks_resumed} resumed from an earlier run" if result.chunks_resumed else ""
            self.on_status(
                f"saved '{self.name}' to {out} ({result.chunks_written} chunks written{resumed}) "
                f"in {format_seconds(result.seconds)}"
            )
        elif isinstance(result, WriteCancelled):
            self.on_status(
                f"save cancelled: {self.job.partial} keeps the chunks written so far; "
                "Save isotropic volume... to the same path with the same settings continues it"
            )
        elif isinstance(result, NiivInputError):
            text = str(result).replace("or pass --restart to discard it", "or delete it to start again")
            text = re.sub(r" \(--[a-z-]+\)", "", text)  # the command line's option names mean nothing here
            self.on_status(f"Save isotropic volume...: {text}")
        else:
            kept = f"; {self.job.partial} is kept: saving again continues it" if self.job.partial.exists() else ""
            self.on_status(f"save failed: {result}{kept}")
        self.on_done(self)
