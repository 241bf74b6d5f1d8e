"""npe2 writer: an image layer saved as OME-Zarr block by block, so a lazy layer is never loaded whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NiivInputError
from ..inference.store import ArrayBlocks, Layout
from ..inference.store import write_ome_zarr as write_store


def write_ome_zarr(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save one image layer at ``path`` with its scale, translate and unit (from the layer metadata).

    A multiscale layer whose first level knows how to write itself (niiv's lazy isotropic layer runs the
    full reconstruction) is delegated to it; any other multiscale layer is saved at its finest level.
    An existing path is never replaced, and a failed write leaves no store behind. That refusal is a
    FileExistsError, not a NiivInputError: napari's ``layers.save(..., plugin=...)`` turns a writer's
    ValueError into a vague "not a valid writer" warning, and this message must reach the user.
    """
    out = Path(path)
    if out.exists():
        raise FileExistsError(f"{out} already exists; napari-niiv never overwrites a store: save under another name")
    if meta.get("multiscale") or isinstance(data, (list, tuple)):  # napari passes its MultiScaleData
        if hasattr(data[0], "write_ome_zarr"):
            data[0].write_ome_zarr(path)
            return [path]
        data = data[0]
    shape = tuple(int(s) for s in data.shape)
    if len(shape) != 3 or meta.get("rgb"):
        raise NiivInputError(
            f"napari-niiv saves 3D (z, y, x) single-channel volumes as OME-Zarr; this layer has shape {shape}"
            f"{' (RGB)' if meta.get('rgb') else ''}: save it with napari's built-in writers (e.g. as .tif) instead"
        )
    unit = (meta.get("metadata") or {}).get("unit")
    layout = Layout(
        shape,  # type: ignore[arg-type]
        np.dtype(data.dtype).str,
        voxel_size=_triple(meta.get("scale"), 1.0),
        unit=unit,
        translation=_triple(meta.get("translate"), 0.0),
        name=out.name.split(".")[0],
    )

    from napari.utils import progress

    with progress(total=100, desc=f"Saving {out.name}") as bar:

        def advance(done: int, total: int) -> None:
            bar.update(int(100 * done / total) - bar.n)

        write_store(out, layout, ArrayBlocks(data), on_progress=advance)
    return [path]


def _triple(values: Any, default: float) -> tuple[float, float, float]:
    if values is None:
        return (default, default, default)
    return tuple(float(v) for v in values)  # type: ignore[return-value]
