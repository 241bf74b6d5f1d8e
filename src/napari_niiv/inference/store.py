"""Write volumes as OME-Zarr pyramids, chunk by chunk, on any dask scheduler, resumably and atomically.

The format is NGFF 0.5 on zarr v3 by default (``Layout(ngff="0.4")``: NGFF 0.4 on zarr v2, for older
readers); napari-ome-zarr, ome-zarr-py and niiv's own reader open both. The metadata is built and
validated with ``ome-zarr-models``; where each level sits comes from ``geometry.py``.

Every task writes its own chunks of one level, so tasks never share a chunk file, and leaves a
marker after each; a run that is killed keeps its ``OUT.partial`` store and the next run with the
same settings (the *fingerprint*) writes only the chunks without a marker. A chunk whose write was
cut short has no marker and is written again; a marker records the size and CRC-32 of its chunk's
file, so that a chunk deleted or damaged before the resume is written again too (with every level
above it).
For a model's blocks (``BlockSource.stacks_z``) a
level-0 task computes a column of chunks stacked along z at once (up to ``BLOCK_VOXELS``): a block
needs input rows of context on each side, and chunks computed one by one would encode the same
input rows again for each. The store appears
under ``OUT`` only when every level is complete, so a failed run never leaves a store that looks
complete. A run can also be *cancelled* cooperatively (``cancelled()``, checked between tasks): it
raises :class:`WriteCancelled` and, when resuming, keeps ``OUT.partial`` for the next run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..data.io import local_path, ngff_unit
from ..errors import NiivInputError
from .geometry import Index, OutputGeometry, chunk_indices, pyramid_shapes

_WORK = ".niiv"  # progress markers and the job fingerprint, inside the partial store
_RUN_ID = "run_id"  # a random name per partial store, kept when it is resumed
NGFF_VERSIONS = ("0.5", "0.4")
DOWNSAMPLING = "local_mean"  # how level L+1 is made from level L (ome-zarr-py's name for block means)
AXES = ("z", "y", "x")
BLOCK_VOXELS = 1 << 24  # output voxels one level-0 task computes at once (64 MiB as float32; 256^3)


class WriteCancelled(Exception):
    """A write stopped between chunks because ``cancelled()`` turned true; ``partial`` holds the
    chunks written so far (kept when the write was resumable)."""

    def __init__(self, partial: Path) -> None:
        super().__init__(f"cancelled; {partial} keeps the chunks written so far: the same save again continues it")
        self.partial = partial


class OutputTaken(NiivInputError):
    """Something appeared at the output path while the store was being written (it was free, or
    ours to replace, when the write began): it is left alone, and the finished store is kept at
    ``partial`` for the user to move."""

    def __init__(self, out: Path, partial: Path, why: str) -> None:
        super().__init__(
            f"{why}; napari-niiv left it alone: the finished reconstruction is kept at {partial}, "
            f"rename that yourself once {out} is out of the way"
        )
        self.partial = partial


class BlockSource(Protocol):
    """What fills level 0: the block at an index of the output (picklable for dask.distributed).

    A source whose blocks cost model time and read context around them sets ``stacks_z = True``:
    the chunks of a column are then computed together, and it is called as
    ``source(index, cancelled=..., progress=...)``, returning None once ``cancelled()`` turns true
    and telling ``progress`` the fraction of the block done (a block can take minutes)."""

    def __call__(self, index: Index) -> np.ndarray: ...


class ArrayBlocks:
    """An array (numpy, dask, zarr, memory-mapped) as a block source, read one chunk at a time."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __call__(self, index: Index) -> np.ndarray:
        block = self.data[index]
        return np.asarray(block.compute(scheduler="synchronous") if hasattr(block, "compute") else block)


@dataclass(frozen=True)
class Layout:
    """Shape, pixel type and chunking of level 0, where it sits in the world (voxel size and the
    translation of voxel 0's centre, as ``output_geometry`` gives them), how many levels, the NGFF
    version (``"0.5"``: zarr v3; ``"0.4"``: zarr v2) and the display window (``contrast``: the
    ``omero`` window's start and end; none written without it)."""

    shape: tuple[int, int, int]
    dtype: str
    chunks: tuple[int, int, int] = (64, 256, 256)
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    unit: str | None = None
    translation: tuple[float, float, float] | None = None
    levels: int | None = None  # None: halve until the largest side is at most geometry.PYRAMID_TOP
    name: str = "niiv"
    ngff: str = "0.5"
    contrast: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "shape", tuple(int(s) for s in self.shape))
        set_(self, "chunks", tuple(min(int(c), s) for c, s in zip(self.chunks, self.shape, strict=True)))
        set_(self, "dtype", np.dtype(self.dtype).str)
        set_(self, "voxel_size", tuple(float(v) for v in self.voxel_size))
        if self.translation is not None:
            set_(self, "translation", tuple(float(t) for t in self.translation))
        set_(self, "unit", ngff_unit(self.unit, strict=True))
        set_(self, "ngff", str(self.ngff))
        if self.ngff not in NGFF_VERSIONS:
            raise NiivInputError(f"OME-Zarr version {self.ngff!r} is not one niiv writes; use 0.5 (default) or 0.4")
        if self.contrast is not None:
            lo, hi = (float(c) for c in self.contrast)
            if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
                raise NiivInputError(f"contrast {self.contrast} is not a window: give two finite numbers, low <= high")
            set_(self, "contrast", (lo, hi))

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        return pyramid_shapes(self.shape, self.levels)

    @property
    def geometry(self) -> OutputGeometry:
        """Level 0 placed in the world; ``.level(L)`` gives each level's voxel size and translation."""
        return OutputGeometry(
            self.shape,
            tuple(slice(0, s) for s in self.shape),  # type: ignore[arg-type]
            self.voxel_size,
            self.translation or (0.0, 0.0, 0.0),
            self.unit,
        )


@dataclass
class WriteReport:
    """What a write did: chunks in all, found done from an earlier run, written now, and seconds."""

    path: Path
    chunks_total: int
    chunks_resumed: int
    chunks_written: int
    seconds: float


def ome_attributes(layout: Layout, group: Any) -> dict[str, Any]:
    """The OME metadata of the store ``group`` (a zarr group holding the level arrays) for
    ``layout``, built and validated by ``ome-zarr-models``: the zarr v3 ``ome`` attribute (NGFF
    0.5) or the zarr v2 attributes (0.4). Level L's scale and translation are
    ``layout.geometry.level(L)``: L averages ``2**L`` voxels per axis, so its first voxel centre
    sits ``(2**L - 1) / 2`` level-0 voxels in."""
    if layout.ngff == "0.5":
        from ome_zarr_models.v05.axes import Axis
        from ome_zarr_models.v05.image import Image
        from pydantic_zarr.v3 import ArraySpec
    else:
        from ome_zarr_models.v04.axes import Axis
        from ome_zarr_models.v04.image import Image
        from pydantic_zarr.v2 import ArraySpec
    from ome_zarr_models.common.omero import Omero

    n = len(layout.shapes)
    geo = layout.geometry
    placed = [geo.level(level) for level in range(n)]
    image = Image.new(
        array_specs=[ArraySpec.from_zarr(group[str(level)]) for level in range(n)],
        paths=[str(level) for level in range(n)],
        axes=[Axis(name=a, type="space", unit=layout.unit) for a in AXES],
        scales=[list(voxel) for voxel, _ in placed],
        translations=[list(shift) if any(shift) else None for _, shift in placed],
        name=layout.name,
        multiscale_type=DOWNSAMPLING,
        metadata={
            "description": "each level is the mean of 2x2x2 voxels of the level above",
            "method": "napari_niiv.inference.store.downsample",
        },
    )
    attrs = image.attributes.ome if layout.ngff == "0.5" else image.attributes
    out = attrs.model_dump(mode="json", exclude_none=True, by_alias=True)
    if layout.contrast is not None:
        out["omero"] = Omero.model_validate(_omero(layout)).model_dump(mode="json", exclude_none=True)
    return {"ome": out} if layout.ngff == "0.5" else out


def _omero(layout: Layout) -> dict[str, Any]:
    """One grey channel whose window is ``layout.contrast`` within the dtype's range (widened to it
    when the contrast reaches past the dtype: a window's start and end lie within its min and max)."""
    dtype = np.dtype(layout.dtype)
    info = np.iinfo(dtype) if dtype.kind in "ui" else np.finfo(dtype) if dtype.kind == "f" else None
    lo, hi = layout.contrast or (0.0, 1.0)
    low, high = (float(info.min), float(info.max)) if info is not None else (0.0, 1.0)
    low, high = min(low, lo), max(high, hi)
    window = {"min": low, "max": high, "start": lo, "end": hi}
    return {
        "channels": [{"color": "FFFFFF", "window": window, "label": layout.name, "active": True}],
        "rdefs": {"model": "greyscale"},
    }


def validate_store(path: str | Path) -> Any:
    """Open an OME-Zarr image with ``ome-zarr-models`` (0.5 or 0.4 by its zarr format); it raises if
    the metadata or the arrays break the spec. Returns the model."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    if group.metadata.zarr_format == 3:
        from ome_zarr_models.v05.image import Image
    else:
        from ome_zarr_models.v04.image import Image
    return Image.from_zarr(group)


def downsample(block: np.ndarray, dtype: Any) -> np.ndarray:
    """Average 2x2x2 voxels (a lone last voxel along an odd axis averages with itself)."""
    x = np.asarray(block, dtype=np.float32)
    pad = [(0, s % 2) for s in x.shape]
    if any(p for _, p in pad):
        x = np.pad(x, pad, mode="edge")
    z, y, w = (s // 2 for s in x.shape)
    out = x.reshape(z, 2, y, 2, w, 2).mean(axis=(1, 3, 5))
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(dtype)


def check_output_path(out: Path, overwrite: bool, source: Path | str | None = None) -> None:
    """Never overwrite or delete user data: refuse an output that is, contains or lies inside the
    input (links resolved), or lies inside any zarr store; with ``overwrite``, replace only a plain
    (not linked) OME-Zarr store that napari-niiv wrote, or a plain file."""
    out = Path(out)
    if source is not None:
        check_outside_input(out, source)
    store = zarr_store_holding(out)
    if store is not None:  # a store nested in it would be a member of its hierarchy (or stray files)
        raise NiivInputError(
            f"{out} lies inside the zarr store {store}; niiv writes its output outside any store it did not "
            "make: choose a path outside it"
        )
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise NiivInputError(f"{out} already exists; choose another output path or pass --overwrite")
    if out.is_symlink():
        raise NiivInputError(f"{out} is a link; napari-niiv never replaces through a link: remove it yourself")
    if out.is_dir() and not written_by_niiv(out):
        raise NiivInputError(
            f"{out} is a folder napari-niiv did not write; --overwrite replaces only niiv's own stores: "
            "choose another output path, or move it away yourself"
        )


def check_outside_input(out: Path, source: Path | str) -> None:
    """Refuse an output that is, contains or lies inside the input ``source`` (links resolved), or
    lies inside the zarr store that holds it (an input ``s.zarr/0``: nothing under ``s.zarr``)."""
    local = local_path(source)  # a file:// URL is the file itself
    if local is None:
        return
    src, dst = local.resolve(), Path(out).resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        where = "is" if dst == src else "lies inside" if src in dst.parents else "contains"
        raise NiivInputError(f"{out}: the output {where} the input {source}; choose an output path outside it")
    partial = partial_path(out).resolve()
    if src == partial or partial in src.parents:  # what --restart or a failed write removes
        raise NiivInputError(
            f"{source}: the input lies inside {partial}, the unfinished store of the output {out}; "
            "copy the input out of it, or choose another output path"
        )
    root = _zarr_root(src)
    if root != src and root in dst.parents:
        raise NiivInputError(
            f"{out}: the output lies inside the zarr store {root} that holds the input {source}; "
            "niiv never writes into an input's store: choose an output path outside it"
        )


_ZARR_NODE = ("zarr.json", ".zgroup", ".zarray", ".zattrs")


def _zarr_root(path: Path) -> Path:
    """The outermost zarr group of which ``path`` (a zarr array or group) is part, or ``path``
    itself when it is not in a zarr store."""
    root = path
    for folder in path.parents:
        if not any((folder / name).is_file() for name in _ZARR_NODE):
            break
        root = folder
    return root


def zarr_store_holding(path: Path) -> Path | None:
    """The zarr group or array folder that ``path`` lies inside (its nearest), or None."""
    for folder in Path(os.path.abspath(path)).parents:
        if any((folder / name).is_file() for name in _ZARR_NODE):
            return folder
    return None


def outside_zarr_stores(folder: Path) -> Path:
    """``folder``, or the folder that holds the outermost zarr store it lies in: where an output
    beside the store a layer was read from (``data.ome.zarr/0``) may go."""
    inside = zarr_store_holding(folder / "_")
    while inside is not None:
        folder = inside.parent
        inside = zarr_store_holding(folder / "_")
    return folder


def written_by_niiv(path: Path) -> bool:
    """True for an OME-Zarr store this package published (its attributes carry the job record)."""
    for meta in (path / "zarr.json", path / ".zattrs"):
        if meta.is_file():
            try:
                attrs = json.loads(meta.read_text())
            except (OSError, ValueError):
                return False
            return "niiv" in attrs.get("attributes", attrs)
    return False


_HELD: dict[str, int] = {}  # the locks this process holds: lock path -> the thread holding it
_HELD_GUARD = threading.Lock()
_UNREADABLE_STALE_S = 30.0  # a lock file still empty or garbled after this long: its writer died writing it


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """One writer per output: ``OUT.lock`` holds the writer's host, pid and start time. Another run
    (another process, or another thread of this one) is refused with them named; a lock left by a
    process that is gone (this host) is taken over. The thread holding the lock may take it again
    (the CLI holds it around its checks, then the training it starts takes it too). The output's
    folder is made if it does not exist yet."""
    lock = Path(out).with_name(Path(out).name + ".lock")
    key = os.path.abspath(lock)
    with _HELD_GUARD:
        nested = _HELD.get(key) == threading.get_ident()
    if nested:
        yield
        return
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    lock.parent.mkdir(parents=True, exist_ok=True)  # the output's folder, as its writer would make it
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            text, other = _read_lock(lock)
            if text is None:
                continue  # it went away meanwhile: try again
            if _stale(lock, other) and _take_over(lock, text):
                continue
            raise NiivInputError(
                f"{out} is being written by another niiv run (pid {other.get('pid', '?')} on "
                f"{other.get('host', '?')}, started {other.get('started', '?')}); wait for it to finish or stop "
                f"it, then rerun (if no such run exists, remove {lock})"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:  # other runs kept taking it over between our tries
        raise NiivInputError(f"{out} is being claimed by other niiv runs right now; wait for them, then rerun")
    with _HELD_GUARD:
        _HELD[key] = threading.get_ident()
    try:
        yield
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        lock.unlink(missing_ok=True)


def _read_lock(lock: Path) -> tuple[str | None, dict[str, Any]]:
    """The lock file's text (None: it is gone) and what it says ({} when it cannot be parsed)."""
    try:
        text = lock.read_text()
    except FileNotFoundError:
        return None, {}
    except OSError:
        return "", {}
    try:
        other = json.loads(text)
    except ValueError:
        other = {}
    return text, other if isinstance(other, dict) else {}


def _stale(lock: Path, other: dict[str, Any]) -> bool:
    """A lock whose writer is gone: a dead pid on this host (or this process's own pid, left by an
    earlier process that had it, when no thread here holds the lock), or a file left empty or
    garbled by a process killed while writing it (and old enough that it is not being written now)."""
    if not other:
        try:
            return time.time() - lock.stat().st_mtime > _UNREADABLE_STALE_S
        except OSError:
            return False
    try:
        pid = int(other.get("pid", -1))
    except (TypeError, ValueError):
        pid = -1
    if other.get("host") != socket.gethostname():
        return False
    if pid == os.getpid():  # this process's pid: stale unless one of its threads holds it (pid reuse)
        with _HELD_GUARD:
            return os.path.abspath(lock) not in _HELD
    return not _alive(pid)


def _take_over(lock: Path, stale_text: str) -> bool:
    """Remove the stale lock reading ``stale_text``, safely against another run doing the same at
    once: the lock is moved aside atomically and removed only if it is still the stale one (if
    another run already replaced it with its own, that lock is put back). False: it was not ours
    to remove."""
    aside = lock.with_name(f"{lock.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return True  # another run removed it first: try to take the lock again
    except OSError:
        return False
    try:
        moved = aside.read_text()
    except OSError:
        moved = None
    if moved == stale_text:
        aside.unlink(missing_ok=True)
        return True
    try:  # another run's fresh lock: put it back unless a lock is there again (a link never replaces)
        os.link(aside, lock)
    except FileExistsError:
        pass
    except OSError:  # no hard links on this file system
        if not lock.exists():
            os.replace(aside, lock)
            return False
    aside.unlink(missing_ok=True)
    return False


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _existing_folder(out: Path) -> Path:
    """The folder ``out`` will be written in, or the nearest existing one above it."""
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folders still to be made will be made in this one
    return folder


def check_writable(out: str | Path, file: bool = False) -> None:
    """Refuse, before any work, an output that could not be written: a parent that is a file, or a
    folder that refuses a new file (read-only, no permission; tried with a probe file, which also
    holds for root and read-only mounts); with ``file``, also a folder (or a link to one) where the
    output file is to go. Creates nothing."""
    out = Path(out)
    if file and out.is_dir():
        raise NiivInputError(f"cannot write {out}: it is a folder; give a file name")
    folder = _existing_folder(out)
    if not folder.is_dir():
        raise NiivInputError(f"cannot write {out}: {folder} is a file, not a folder; choose another output path")
    probe = folder / f".{out.name}.{uuid.uuid4().hex}.probe"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        raise NiivInputError(
            f"cannot write {out}: the folder {folder} refuses new files ({exc.strerror or exc}); "
            "choose another output path, or make the folder writable"
        ) from exc


def check_room(out: str | Path, need: int, what: str) -> None:
    """Refuse, before any work, an output whose disk has less than ``need`` bytes free."""
    folder = _existing_folder(Path(out))
    free = shutil.disk_usage(folder).free
    if free < need:
        raise NiivInputError(
            f"{folder} has {free / 1e6:.1f} MB free; {what} needs about {need / 1e6:.1f} MB there: "
            "free some space or choose another output path"
        )


def discard_partial(out: str | Path) -> bool:
    """Remove an unfinished niiv run's ``OUT.partial`` (``--restart``); a folder of that name that
    niiv did not make is refused, never deleted. False when there was none."""
    partial = partial_path(out)
    if not partial.exists():
        return False
    if partial.is_symlink() or not (partial / _WORK / "job.json").is_file():
        raise NiivInputError(f"{partial} exists but is not an unfinished niiv run; move it away yourself and rerun")
    shutil.rmtree(partial)
    return True


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _aside(path: Path, kind: str) -> Path:
    """A folder beside ``path`` for a short while: a store made aside (``kind`` 'new') or the store
    ``--overwrite`` replaces, set aside (``kind`` 'replaced'); :func:`_remove_leftovers` knows them."""
    return path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.{kind}")


def _remove_leftovers(base: Path, kind: str) -> None:
    """Remove the ``kind`` folders :func:`_aside` made beside ``base`` that a kill (SIGKILL, a power
    cut) left in the moments they exist: an empty store made aside, or an old output --overwrite
    was replacing. Only names of that exact form, which nothing else makes; called under the
    output's lock, so never another run's."""
    shape = re.compile(re.escape(base.name) + r"\.[0-9a-f]{8}\." + re.escape(kind))
    for path in base.parent.glob(f"{glob_escape(base.name)}.*.{kind}"):
        if shape.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class _ChunkTask:
    """Chunks of one level computed together: from the source in one block (level 0: chunks
    stacked along z), or each from the level below."""

    level: int
    chunks: tuple[Index, ...]

    @property
    def index(self) -> Index:
        """The region the chunks cover together."""
        first, last = self.chunks[0], self.chunks[-1]
        return tuple(slice(a.start, b.stop) for a, b in zip(first, last, strict=True))  # type: ignore[return-value]


def _tasks(level: int, shape: tuple[int, int, int], chunks: tuple[int, int, int], stack: bool) -> list[_ChunkTask]:
    """With ``stack``, level 0: the chunks of each (y, x) column stacked along z, up to
    ``BLOCK_VOXELS`` a task; else one chunk a task (a block mean, an array read no context)."""
    indices = chunk_indices(shape, chunks)
    if level > 0 or not stack:
        return [_ChunkTask(level, (i,)) for i in indices]
    tasks = []
    columns: dict[tuple[int, int], list[Index]] = {}
    for i in indices:  # in z order within each column
        columns.setdefault((i[1].start, i[2].start), []).append(i)
    for column in columns.values():
        group: list[Index] = []
        voxels = 0
        for i in column:
            if group and voxels + _size(i) > BLOCK_VOXELS:
                tasks.append(_ChunkTask(level, tuple(group)))
                group, voxels = [], 0
            group.append(i)
            voxels += _size(i)
        tasks.append(_ChunkTask(level, tuple(group)))
    return tasks


def _size(index: Index) -> int:
    return int(np.prod([s.stop - s.start for s in index]))


@dataclass
class _Job:
    """Everything a worker needs to write chunks into the partial store (shipped once per worker).
    ``cancelled`` (in-process runners only: it does not pickle) makes a task that starts after a
    cancel return at once, writing nothing; ``computed`` (in-process only too) hears how many
    voxels of a stacked task are computed so far, by its first chunk's corner, None once it ends."""

    store: str
    dtype: str
    source: BlockSource
    cancelled: Callable[[], bool] | None = None
    computed: Callable[[tuple[int, ...], int | None], None] | None = None
    run_id: str | None = None  # the partial store's identity (see _run_id): a task of an older run writes nothing

    def _current(self, store: Path) -> bool:
        """Whether the partial store is still the one this job was made for: a cluster task that
        outlives its client (Ctrl-C, a killed job) must not write into a store a ``--restart`` made anew."""
        if self.run_id is None:
            return True
        try:
            return (store / _WORK / _RUN_ID).read_text() == self.run_id
        except OSError:
            return False

    def __call__(self, task: _ChunkTask) -> tuple[int, int]:
        import zarr

        if self.cancelled is not None and self.cancelled():
            return task.level, 0
        store = Path(self.store)
        if not self._current(store):
            return task.level, 0
        todo = [c for c in task.chunks if not _marker(store, task.level, c).exists()]  # a resumed task
        if not todo:
            return task.level, 0
        arr = zarr.open_array(str(store / str(task.level)), mode="r+")
        region = task.index
        if task.level == 0 and getattr(self.source, "stacks_z", False):
            key, voxels, tell = tuple(s.start for s in task.chunks[0]), sum(_size(c) for c in todo), self.computed
            progress = None if tell is None else (lambda f: tell(key, int(f * voxels)))
            try:
                made = self.source(region, cancelled=self.cancelled or (lambda: False), progress=progress)  # type: ignore[call-arg]
            finally:
                if tell is not None:
                    tell(key, None)
            if made is None:  # cancelled while computing: nothing written
                return task.level, 0
            block = np.asarray(made, dtype=self.dtype)
        elif task.level == 0:
            block = np.asarray(self.source(region), dtype=self.dtype)
        else:
            below = zarr.open_array(str(store / str(task.level - 1)), mode="r")
            block = downsample(below[tuple(slice(2 * s.start, 2 * s.stop) for s in region)], self.dtype)
        if not self._current(store):  # discarded while this task computed
            return task.level, 0
        for chunk in todo:
            arr[chunk] = block[
                tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(chunk, region, strict=True))
            ]
            if not self._current(store):  # no marker: the new run writes this chunk again
                return task.level, 0
            _marker(store, task.level, chunk).write_text(_stored_record(store, task.level, arr, chunk))
        return task.level, sum(_size(c) for c in todo)


def _marker(store: Path, level: int, chunk: Index) -> Path:
    name = ".".join(str(s.start) for s in chunk)
    return store / _WORK / "done" / str(level) / name


def _stored_record(store: Path, level: int, arr: Any, chunk: Index) -> str:
    """What a marker records of the file holding ``chunk`` of level ``level``: its size and CRC-32
    (``"0"``: no file, a chunk all fill value that zarr does not store). The size alone missed
    damage that keeps it (a flipped bit), which a resume then published."""
    coords = tuple(s.start // c for s, c in zip(chunk, arr.chunks, strict=True))
    try:
        content = (store / str(level) / arr.metadata.encode_chunk_key(coords)).read_bytes()
    except FileNotFoundError:
        return "0"
    return f"{len(content)} {zlib.crc32(content):08x}"


def _unchanged(recorded: str, now: str) -> bool:
    """Whether a chunk file is as its marker recorded; a marker of an older version holds only the
    size, which is all it can be checked against."""
    return recorded == now if " " in recorded else recorded == now.split(" ")[0]


def _drop_damaged(partial: Path, tasks: list[list[_ChunkTask]]) -> None:
    """Before resuming: remove the marker of every chunk whose file is gone or has another size or
    checksum than when it was written (deleted or damaged since), and the markers of all the levels above
    it, which were made from it; those chunks are written again. A marker without a size (an
    older version's, or one a kill cut short after its chunk was written) is trusted."""
    import zarr

    below_damaged = False  # a level with a chunk written again makes every level above it again
    for level, level_tasks in enumerate(tasks):
        arr = None
        damaged = below_damaged
        for chunk in (c for t in level_tasks for c in t.chunks):
            marker = _marker(partial, level, chunk)
            try:
                recorded = marker.read_text().strip()
            except FileNotFoundError:
                continue
            if not below_damaged:
                if not recorded:
                    continue
                arr = arr if arr is not None else zarr.open_array(str(partial / str(level)), mode="r")
                if _unchanged(recorded, _stored_record(partial, level, arr, chunk)):
                    continue
            marker.unlink()
            damaged = True
        below_damaged = damaged


def write_ome_zarr(
    out: str | Path,
    layout: Layout,
    source: BlockSource,
    *,
    runner: Any = None,
    fingerprint: dict[str, Any] | None = None,
    resume: bool = False,
    restart: bool = False,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    input_path: Path | str | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> WriteReport:
    """Write ``source`` as an OME-Zarr pyramid at ``out``; ``runner`` (see task_runner) spreads the
    chunks over threads or a dask cluster (default: one chunk at a time on dask's threaded scheduler).

    ``resume``: continue an earlier ``out.partial`` with the same ``fingerprint`` (any other one is
    refused; ``restart`` discards it first, once this run holds the output's lock) and keep the
    partial store if this run fails, so that it can be continued too. Without it a failed run
    removes its partial store. ``on_progress(done, total)`` counts voxels over all
    levels, never decreasing: those written, plus (in-process runners) those computed so far by
    the columns being computed, so that a save of one column moves too; calls come one at a time,
    from the calling thread or a worker thread. Its first call gives what an earlier run wrote.

    ``cancelled()`` is asked between tasks (and, by a ``stacks_z`` source, inside its block): once
    it is true, no further task starts and :class:`WriteCancelled` is raised when the tasks already
    running have finished or given up (on the
    threaded runner; a distributed run cancels its futures), so nothing writes into the partial
    store after this returns.
    """
    out = Path(out)
    check_output_path(out, overwrite, input_path)
    with output_lock(out):
        if restart:  # under the lock: never a running job's store
            discard_partial(out)
        _remove_leftovers(partial_path(out), "new")
        return _write(out, layout, source, runner, fingerprint, resume, on_progress, cancelled, overwrite)


def _write(
    out: Path,
    layout: Layout,
    source: BlockSource,
    runner: Any,
    fingerprint: dict[str, Any] | None,
    resume: bool,
    on_progress: Callable[[int, int], None] | None,
    cancelled: Callable[[], bool] | None = None,
    overwrite: bool = False,
) -> WriteReport:
    from .runners import ThreadedRunner

    partial = partial_path(out)
    job_record = json.loads(
        json.dumps({"layout": asdict(layout) | {"shapes": layout.shapes}, "fingerprint": fingerprint or {}})
    )
    resumed = _prepare(partial, layout, job_record, resume)
    runner = runner or ThreadedRunner()
    in_process = isinstance(runner, ThreadedRunner)
    t0 = time.perf_counter()
    shapes = layout.shapes
    stack = bool(getattr(source, "stacks_z", False))
    tasks = [_tasks(lv, s, layout.chunks, stack) for lv, s in enumerate(shapes)]
    if resumed:
        _drop_damaged(partial, tasks)
    unmarked = [[[c for c in t.chunks if not _marker(partial, t.level, c).exists()] for t in level] for level in tasks]
    todo = [
        [t for t, left in zip(level, lefts, strict=True) if left] for level, lefts in zip(tasks, unmarked, strict=True)
    ]
    missing = [c for lefts in unmarked for left in lefts for c in left]
    total = sum(int(np.prod(s)) for s in shapes)
    done = total - sum(_size(c) for c in missing)
    computing: dict[tuple[int, ...], int] = {}  # voxels computed so far by the stacked tasks running
    lock = threading.Lock()
    reported = 0

    def report() -> None:
        nonlocal reported
        with lock:  # one call at a time, never backwards
            reported = max(reported, done + sum(computing.values()))
            if on_progress is not None:
                on_progress(reported, total)

    def computed(key: tuple[int, ...], voxels: int | None) -> None:
        with lock:
            if voxels is None:
                computing.pop(key, None)
            else:
                computing[key] = voxels
        if voxels is not None:
            report()

    track = in_process and on_progress is not None
    job = _Job(
        str(partial.absolute()),  # a cluster's workers do not share this process' working directory
        layout.dtype,
        source,
        cancelled if in_process else None,
        computed if track else None,
        _run_id(partial),
    )
    report()

    def stop_if_cancelled(level_todo: list[_ChunkTask]) -> None:
        if cancelled is not None and cancelled() and any(not _done(partial, t) for t in level_todo):
            raise WriteCancelled(partial)

    try:
        for level_todo in todo:  # a level needs the whole level below it
            if not level_todo:
                continue
            stop_if_cancelled(level_todo)

            def advance(result: tuple[int, int]) -> None:
                nonlocal done
                with lock:
                    done += result[1]
                if result[1]:
                    report()
                if not in_process and cancelled is not None and cancelled():
                    raise WriteCancelled(partial)  # a cluster's futures are cancelled by its runner

            runner.run(job, level_todo, advance)
            stop_if_cancelled(level_todo)
        _finish(partial, out, layout, fingerprint, overwrite)
    except BaseException as exc:
        if not resume and not isinstance(exc, OutputTaken):
            shutil.rmtree(partial, ignore_errors=True)
        raise
    n_total = sum(len(t.chunks) for level in tasks for t in level)
    n_written = len(missing)
    return WriteReport(
        out,
        n_total,
        n_total - n_written if resumed else 0,
        n_written,
        time.perf_counter() - t0,
    )


def _done(partial: Path, task: _ChunkTask) -> bool:
    return all(_marker(partial, task.level, c).exists() for c in task.chunks)


_REASONS = {
    # a copy or a touch changes the date only: said, so that the user does not look for an edit
    "input_content": "the input's content, size or modification date changed since that run",
    "input": "another input",
    "settings": "other alpha, scale, orientation, device, precision or sections (degradation)",
    "weights_sha256": "other weights",
    "normalisation": "another intensity normalisation",
    "output_shape": "another output shape (alpha, scale or region)",
    "region": "another region (--region)",
    "voxel_size": "other voxel sizes",
    "translation": "another position of the output in the world",
    "unit": "another unit",
    "dtype": "another pixel type",
    "output": "the confidence map, not the reconstruction (or the other way round)",
}
# what the store's layout (not the reconstruction) differs in, by Layout field
_LAYOUT_REASONS = {
    "chunks": "other chunks (--chunks)",
    "levels": "another number of pyramid levels (--levels)",
    "shapes": "another number of pyramid levels (--levels)",
    "ngff": "another NGFF version (--ngff)",
    "contrast": "another display window",
    "name": "another output name",
    "shape": _REASONS["output_shape"],
}


# what follows from other settings (alpha, scale): not said again when the settings differ
_CONSEQUENCES = {"output_shape", "shape", "region", "voxel_size", "translation", "shapes"}


def _differences(earlier: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """How an unfinished run's job record differs from this run's, in the user's words (what
    follows from different settings, such as the output's shape, is not listed beside them)."""
    found: list[str] = []
    settings_differ = (earlier.get("fingerprint") or {}).get("settings") != (record.get("fingerprint") or {}).get(
        "settings"
    )
    for part, reasons in (("fingerprint", _REASONS), ("layout", _LAYOUT_REASONS)):
        old, new = earlier.get(part) or {}, record.get(part) or {}
        for key in sorted(set(old) | set(new)):
            if settings_differ and key in _CONSEQUENCES:
                continue
            if old.get(key) != new.get(key):
                # a layout field the fingerprint holds too (dtype, unit, voxel size) in the same words
                reason = reasons.get(key) or _REASONS.get(key) or f"another {key.replace('_', ' ')}"
                if reason not in found:
                    found.append(reason)
    return found


def _settings_detail(earlier: dict[str, Any], record: dict[str, Any]) -> str:
    """Which settings differ, with both values ('; that run had precision bf16 (this run: fp32)'):
    the reason names six that might."""
    old = (earlier.get("fingerprint") or {}).get("settings") or {}
    new = (record.get("fingerprint") or {}).get("settings") or {}
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ""
    parts = [
        f"{key} {old.get(key, 'not set')} (this run: {new.get(key, 'not set')})"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    return f"; that run had {', '.join(parts)}" if parts else ""


def _prepare(partial: Path, layout: Layout, record: dict[str, Any], resume: bool) -> bool:
    """Open the partial store to continue it (True) or create it afresh (False)."""
    job_file = partial / _WORK / "job.json"
    if partial.exists():
        if resume and job_file.exists():
            earlier = json.loads(job_file.read_text())
            if earlier == record:
                return True
            why = ", ".join(_differences(earlier, record)) or "its record could not be read"
            raise NiivInputError(
                f"{partial} holds an unfinished run that differs from this one ({why}): its chunks would be "
                f"stale{_settings_detail(earlier, record)}; rerun with the same input and settings to finish it, "
                "or pass --restart to discard it"
            )
        if not job_file.exists():
            raise NiivInputError(f"{partial} exists but is not an unfinished niiv run; move it away and rerun")
        shutil.rmtree(partial)  # our own unfinished run, not resumed
    # made aside and renamed once its job record is in: a run stopped while the store is made
    # (Ctrl-C at the start) leaves no OUT.partial that neither a rerun nor --restart would take
    fresh = _aside(partial, "new")
    try:
        _create_store(fresh, layout)
        for level in range(len(layout.shapes)):
            (fresh / _WORK / "done" / str(level)).mkdir(parents=True)
        (fresh / _WORK / "job.json").write_text(json.dumps(record, indent=1))
        fresh.rename(partial)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    return False


def _run_id(partial: Path) -> str:
    """The partial store's identity: made with the store, kept while it is resumed (a partial
    store of an older version gets one now). Chunk tasks compare it before writing."""
    path = partial / _WORK / _RUN_ID
    try:
        return path.read_text()
    except FileNotFoundError:
        run_id = uuid.uuid4().hex
        tmp = path.with_suffix(".tmp")
        tmp.write_text(run_id)
        tmp.replace(path)
        return run_id


def _create_store(path: Path, layout: Layout) -> None:
    """A group with one array per level: zarr v3 with ``dimension_names`` z, y, x (NGFF 0.5), or
    zarr v2 with "/"-separated chunk keys (NGFF 0.4)."""
    import zarr

    v3 = layout.ngff == "0.5"
    root = zarr.open_group(str(path), mode="w", zarr_format=3 if v3 else 2)
    for level, shape in enumerate(layout.shapes):
        chunks = tuple(min(c, s) for c, s in zip(layout.chunks, shape, strict=True))
        extra: dict[str, Any] = (
            {"dimension_names": AXES} if v3 else {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
        )
        root.create_array(str(level), shape=shape, chunks=chunks, dtype=layout.dtype, fill_value=0, **extra)


def _finish(
    partial: Path, out: Path, layout: Layout, fingerprint: dict[str, Any] | None, overwrite: bool = False
) -> None:
    """Metadata last (validated against the arrays written), progress markers removed, then one
    rename makes the store appear whole. What is at ``out`` now is checked again (a write can take
    hours): only what :func:`check_output_path` lets ``overwrite`` replace is replaced."""
    import zarr

    root = zarr.open_group(str(partial), mode="r+")
    root.attrs.update(ome_attributes(layout, root) | ({"niiv": fingerprint} if fingerprint else {}))
    if out.exists() or out.is_symlink():
        try:
            check_output_path(out, overwrite)
        except NiivInputError as exc:
            raise OutputTaken(out, partial, f"{out} appeared while the store was being written") from exc
    if out.is_dir() and not out.is_symlink():  # moved aside first: a kill while a large store is deleted
        # left half of it at OUT, which --overwrite then refused as a folder niiv did not write
        out.rename(_aside(out, "replaced"))
    elif out.exists() or out.is_symlink():
        out.unlink()
    partial.rename(out)
    shutil.rmtree(out / _WORK, ignore_errors=True)  # a kill just before this leaves only stale markers
    # the store set aside above, and any an earlier run killed while it replaced OUT left: OUT is new now
    _remove_leftovers(out, "replaced")
