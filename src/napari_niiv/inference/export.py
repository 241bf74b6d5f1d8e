"""Write the isotropic reconstruction as an OME-Zarr pyramid: the one path behind `niiv reconstruct`,
saving the lazy napari layer and background saves, resumable when asked.

The job (:class:`~.reconstructor.BlockReconstruction`) already carries the settings and the output
geometry, so the store's layout and the resume fingerprint are derived here from it, never
assembled again by a caller.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..data.io import local_path, volume_name
from .reconstructor import BlockReconstruction
from .store import Layout, WriteReport, write_ome_zarr

DEFAULT_CHUNKS = (64, 256, 256)


def weights_digest(state: dict[str, Any]) -> str:
    """sha256 over a model's tensors (names, shapes, dtypes, bytes): the same weights, the same digest."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def path_signature(path: str | Path) -> dict[str, Any]:
    """Size and modification time of a file, or of every file under a directory store (count,
    total bytes, newest mtime), also of a file:// URL; nothing for a remote URL (its content digest
    still counts)."""
    p = local_path(path)  # a file:// URL: the file itself
    if p is None or not p.exists():
        return {}
    if p.is_file():
        st = p.stat()
        return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    count = total = newest = 0
    for root, _, files in os.walk(p):
        for name in files:
            st = os.stat(os.path.join(root, name))
            count, total, newest = count + 1, total + st.st_size, max(newest, st.st_mtime_ns)
    return {"files": count, "bytes": total, "mtime_ns": newest}


def input_signature(job: BlockReconstruction) -> dict[str, Any]:
    """What identifies the input's content: its shape, a digest of sampled chunks, and for a path
    (or the file an array was read from, ``job.origin``) its size and modification time."""
    from ..data.io import open_volume
    from ..data.normalise import content_digest

    data = open_volume(job.source).data if isinstance(job.source, str) else job.source
    sig: dict[str, Any] = {"shape": [int(s) for s in data.shape], "content_sha256": content_digest(data)}
    path = job.source if isinstance(job.source, str) else job.origin
    if path:
        sig |= path_signature(path)
    return sig


def fingerprint(job: BlockReconstruction, input_id: str | None = None) -> dict[str, Any]:
    """What must be equal for a resumed run to continue an earlier one: the input (name and
    content), settings as they run here, geometry, normalisation and weights."""
    g = job.geometry
    source = job.source if isinstance(job.source, str) else None
    return {
        "input": input_id or source or "in-memory array",
        "input_content": input_signature(job),
        "settings": job.settings.resolved().to_dict(),
        "output_shape": list(g.shape),
        "region": [[r.start, r.stop] for r in g.region],
        "voxel_size": list(g.voxel_size),
        "translation": list(g.translation),
        "unit": g.unit,
        "normalisation": job.norm.to_dict(),
        "weights_sha256": weights_digest(job.state),
        "dtype": job.dtype.str,
        **({"output": "confidence map"} if job.confidence else {}),
    }


def write_isotropic(
    out: str | Path,
    job: BlockReconstruction,
    *,
    chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
    levels: int | None = None,
    ngff: str = "0.5",
    contrast: tuple[float, float] | None = None,
    runner: Any = None,
    resume: bool = False,
    restart: bool = False,
    overwrite: bool = False,
    input_id: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> WriteReport:
    """Reconstruct ``job`` into an OME-Zarr pyramid at ``out`` (see :func:`.store.write_ome_zarr`
    for resume, atomicity, runners and ``cancelled``, asked between tasks and inside a block: a
    cancelled write raises :class:`.store.WriteCancelled` and keeps ``OUT.partial`` when ``resume``)."""
    out = Path(out)
    g = job.geometry
    layout = Layout(
        g.size,
        job.dtype.str,
        chunks,
        g.voxel_size,
        g.unit,
        g.translation,
        levels,
        volume_name(out) or "niiv",  # my.data.v2.ome.zarr: "my.data.v2", not "my"
        ngff,
        None if contrast is None else (float(contrast[0]), float(contrast[1])),
    )
    return write_ome_zarr(
        out,
        layout,
        job,
        runner=runner,
        fingerprint=fingerprint(job, input_id),
        resume=resume,
        restart=restart,
        overwrite=overwrite,
        on_progress=on_progress,
        input_path=job.source if isinstance(job.source, str) else None,
        cancelled=cancelled,
    )
