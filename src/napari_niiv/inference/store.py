"""Write volumes as OME-Zarr pyramids (NGFF 0.4, zarr v2 layout, read by napari, napari-ome-zarr and
ome-zarr-py), one chunk per task, on any dask scheduler, resumably and atomically.

Every task writes exactly one chunk of one level, so tasks never share a chunk file, and then leaves
a marker; a run that is killed keeps its ``OUT.partial`` store and the next run with the same
settings (the *fingerprint*) writes only the chunks without a marker. A chunk whose write was cut
short has no marker and is written again. The store appears under ``OUT`` only when every level is
complete, so a failed run never leaves a store that looks complete.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import NiivInputError

Index = tuple[slice, slice, slice]
_WORK = ".niiv"  # progress markers and the job fingerprint, inside the partial store
PYRAMID_TOP = 256  # levels are added until the largest side is at most this


class BlockSource(Protocol):
    """What fills level 0: the block at an index of the output (picklable for dask.distributed)."""

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
    """Shape, pixel type and chunking of level 0, where it sits in the world, and how many levels."""

    shape: tuple[int, int, int]
    dtype: str
    chunks: tuple[int, int, int] = (64, 256, 256)
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    unit: str | None = None
    translation: tuple[float, float, float] | None = None
    levels: int | None = None  # None: halve until the largest side is at most PYRAMID_TOP
    name: str = "niiv"

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunks", tuple(min(c, s) for c, s in zip(self.chunks, self.shape, strict=True)))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).str)

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        return pyramid_shapes(self.shape, self.levels)


@dataclass
class WriteReport:
    """What a write did: chunks in all, found done from an earlier run, written now, and seconds."""

    path: Path
    chunks_total: int
    chunks_resumed: int
    chunks_written: int
    seconds: float


def pyramid_shapes(shape: tuple[int, int, int], levels: int | None = None) -> list[tuple[int, int, int]]:
    """Level shapes, each half the previous (rounded up) along every axis: the output is isotropic."""
    shapes = [tuple(int(s) for s in shape)]
    while (len(shapes) < levels) if levels is not None else max(shapes[-1]) > PYRAMID_TOP:
        if max(shapes[-1]) == 1:
            break
        shapes.append(tuple(-(-s // 2) for s in shapes[-1]))
    return shapes  # type: ignore[return-value]


def ome_metadata(
    voxel_size: tuple[float, float, float],
    unit: str | None,
    levels: int = 1,
    name: str = "niiv",
    translation: tuple[float, float, float] | None = None,
) -> dict[str, Any]:
    """NGFF 0.4 multiscales. Level L averages 2^L voxels per axis, so its first voxel centre sits
    (2^L - 1) / 2 level-0 voxels in: each level gets its own translation."""
    axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "zyx"]
    base = translation or (0.0, 0.0, 0.0)
    datasets = []
    for level in range(levels):
        f = 2**level
        scale = [v * f for v in voxel_size]
        shift = [t + v * (f - 1) / 2 for t, v in zip(base, voxel_size, strict=True)]
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if any(shift):
            transforms.append({"type": "translation", "translation": shift})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    return {"multiscales": [{"version": "0.4", "name": name, "axes": axes, "datasets": datasets}]}


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


def chunk_indices(shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> list[Index]:
    """The chunks of an array, as indices (the last ones along an axis may be smaller)."""
    ranges = [[slice(a, min(a + c, s)) for a in range(0, s, c)] for s, c in zip(shape, chunks, strict=True)]
    return [(z, y, x) for z in ranges[0] for y in ranges[1] for x in ranges[2]]


def check_output_path(out: Path, overwrite: bool, source: Path | None = None) -> None:
    """Never overwrite user data by accident, and never write onto the input."""
    if source is not None and out.resolve() == source.resolve():
        raise NiivInputError(f"{out}: the output would replace the input volume; choose another output path")
    if out.exists() and not overwrite:
        raise NiivInputError(f"{out} already exists; choose another output path or pass --overwrite")


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


@dataclass(frozen=True)
class _ChunkTask:
    """One chunk of one level: computed from the source (level 0) or from the level below."""

    level: int
    index: Index


@dataclass
class _Job:
    """Everything a worker needs to write chunks into the partial store (shipped once per worker)."""

    store: str
    dtype: str
    source: BlockSource

    def __call__(self, task: _ChunkTask) -> tuple[int, int]:
        import zarr

        arr = zarr.open_array(str(Path(self.store) / str(task.level)), mode="r+")
        if task.level == 0:
            block = np.asarray(self.source(task.index), dtype=self.dtype)
        else:
            below = zarr.open_array(str(Path(self.store) / str(task.level - 1)), mode="r")
            block = downsample(below[tuple(slice(2 * s.start, 2 * s.stop) for s in task.index)], self.dtype)
        arr[task.index] = block
        _marker(Path(self.store), task).touch()
        return task.level, int(block.size)


def _marker(store: Path, task: _ChunkTask) -> Path:
    name = ".".join(str(s.start) for s in task.index)
    return store / _WORK / "done" / str(task.level) / name


def write_ome_zarr(
    out: str | Path,
    layout: Layout,
    source: BlockSource,
    *,
    runner: Any = None,
    fingerprint: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> WriteReport:
    """Write ``source`` as an OME-Zarr pyramid at ``out``; ``runner`` (see task_runner) spreads the
    chunks over threads or a dask cluster (default: one chunk at a time on dask's threaded scheduler).

    ``resume``: continue an earlier ``out.partial`` with the same ``fingerprint`` (any other one is
    refused) and keep the partial store if this run fails, so that it can be continued too. Without
    it a failed run removes its partial store. ``on_progress(done, total)`` counts voxels written,
    over all levels, on the calling thread; its first call gives what an earlier run wrote.
    """
    from .runners import ThreadedRunner

    out = Path(out)
    check_output_path(out, overwrite)
    partial = partial_path(out)
    job_record = json.loads(
        json.dumps({"layout": asdict(layout) | {"shapes": layout.shapes}, "fingerprint": fingerprint or {}})
    )
    resumed = _prepare(partial, layout, job_record, resume)
    runner = runner or ThreadedRunner()
    job = _Job(str(partial), layout.dtype, source)
    t0 = time.perf_counter()
    shapes = layout.shapes
    tasks = [[_ChunkTask(lv, i) for i in chunk_indices(s, layout.chunks)] for lv, s in enumerate(shapes)]
    todo = [[t for t in level if not _marker(partial, t).exists()] for level in tasks]
    total = sum(int(np.prod(s)) for s in shapes)
    done = total - sum(_voxels(t) for level in todo for t in level)
    if on_progress is not None:
        on_progress(done, total)
    try:
        for level_todo in todo:  # a level needs the whole level below it
            if not level_todo:
                continue

            def advance(result: tuple[int, int]) -> None:
                nonlocal done
                done += result[1]
                if on_progress is not None:
                    on_progress(done, total)

            runner.run(job, level_todo, advance)
        meta = ome_metadata(layout.voxel_size, layout.unit, len(shapes), layout.name, layout.translation)
        _finish(partial, out, meta, fingerprint)
    except BaseException:
        if not resume:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    n_total = sum(len(level) for level in tasks)
    n_written = sum(len(level) for level in todo)
    return WriteReport(
        out,
        n_total,
        n_total - n_written if resumed else 0,
        n_written,
        time.perf_counter() - t0,
    )


def _voxels(task: _ChunkTask) -> int:
    return int(np.prod([s.stop - s.start for s in task.index]))


def _prepare(partial: Path, layout: Layout, record: dict[str, Any], resume: bool) -> bool:
    """Open the partial store to continue it (True) or create it afresh (False)."""
    job_file = partial / _WORK / "job.json"
    if partial.exists():
        if resume and job_file.exists():
            earlier = json.loads(job_file.read_text())
            if earlier == record:
                return True
            changed = sorted(
                k
                for k in set(earlier.get("fingerprint", {})) | set(record["fingerprint"])
                if earlier.get("fingerprint", {}).get(k) != record["fingerprint"].get(k)
            ) or ["chunking or output shape"]
            raise NiivInputError(
                f"{partial} holds an unfinished run with other settings ({', '.join(changed)}); rerun with "
                "the same settings to finish it, or pass --restart to discard it"
            )
        if resume and not job_file.exists():
            raise NiivInputError(f"{partial} exists but is not an unfinished niiv run; move it away and rerun")
        shutil.rmtree(partial)
    _create_store(partial, layout)
    for level in range(len(layout.shapes)):
        (partial / _WORK / "done" / str(level)).mkdir(parents=True)
    tmp = job_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(job_file)
    return False


def _create_store(path: Path, layout: Layout) -> None:
    """A zarr v2-format group with one array per level ("/"-separated chunk keys, as NGFF 0.4 asks),
    with zarr-python 3 or 2."""
    import zarr

    v3 = int(zarr.__version__.split(".")[0]) >= 3
    root = zarr.open_group(str(path), mode="w", **({"zarr_format": 2} if v3 else {}))
    for level, shape in enumerate(layout.shapes):
        chunks = tuple(min(c, s) for c, s in zip(layout.chunks, shape, strict=True))
        if v3:
            enc = {"name": "v2", "separator": "/"}
            root.create_array(
                str(level), shape=shape, chunks=chunks, dtype=layout.dtype, fill_value=0, chunk_key_encoding=enc
            )
        else:  # pragma: no cover - zarr 2 (Python 3.10)
            root.create_dataset(
                str(level), shape=shape, chunks=chunks, dtype=layout.dtype, fill_value=0, dimension_separator="/"
            )


def _finish(partial: Path, out: Path, meta: dict[str, Any], fingerprint: dict[str, Any] | None) -> None:
    """Metadata last, progress markers removed, then one rename makes the store appear whole."""
    import zarr

    root = zarr.open_group(str(partial), mode="r+")
    root.attrs.update(meta | ({"niiv": fingerprint} if fingerprint else {}))
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    partial.rename(out)
    shutil.rmtree(out / _WORK, ignore_errors=True)  # a kill just before this leaves only stale markers
