"""Write reconstructions as OME-Zarr (NGFF 0.4, zarr v2 layout, read by napari-ome-zarr and
ome-zarr-py), block by block, atomically: the store appears under its name only when complete."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NiivInputError


def ome_metadata(
    voxel_size: tuple[float, float, float],
    unit: str | None,
    levels: int = 1,
    name: str = "niiv",
    translation: tuple[float, float, float] | None = None,
) -> dict[str, Any]:
    axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "zyx"]
    datasets = []
    for level in range(levels):
        f = 2**level
        scale = [voxel_size[0] * f, voxel_size[1] * f, voxel_size[2] * f]
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if translation is not None and any(translation):
            transforms.append({"type": "translation", "translation": list(translation)})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    return {"multiscales": [{"version": "0.4", "name": name, "axes": axes, "datasets": datasets}]}


def _create_v2_store(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any) -> tuple[Any, Any]:
    """A zarr v2-format group with array "0" ("/"-separated chunk keys, as NGFF 0.4 asks), with
    zarr-python 3 or 2."""
    import zarr

    if int(zarr.__version__.split(".")[0]) >= 3:
        root = zarr.open_group(str(path), mode="w", zarr_format=2)
        enc = {"name": "v2", "separator": "/"}
        arr = root.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0, chunk_key_encoding=enc)
    else:  # pragma: no cover - zarr 2 (Python 3.10)
        root = zarr.open_group(str(path), mode="w")
        arr = root.create_dataset("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0, dimension_separator="/")
    return root, arr


def check_output_path(out: Path, overwrite: bool, source: Path | None = None) -> None:
    """Never overwrite user data by accident, and never write onto the input."""
    if source is not None and out.resolve() == source.resolve():
        raise NiivInputError(f"{out}: the output would replace the input volume; choose another output path")
    if out.exists() and not overwrite:
        raise NiivInputError(f"{out} already exists; choose another output path or pass --overwrite")


def write_ome_zarr(
    out: str | Path,
    shape: tuple[int, int, int],
    dtype: Any,
    voxel_size: tuple[float, float, float],
    blocks: Iterator[tuple[tuple[slice, slice, slice], np.ndarray]],
    chunks: tuple[int, int, int] = (64, 256, 256),
    unit: str | None = None,
    overwrite: bool = False,
    on_block: Callable[[int], None] | None = None,
    translation: tuple[float, float, float] | None = None,
) -> Path:
    """Fill a new OME-Zarr at ``out`` from ``(index, array)`` blocks, then move it into place.

    Written to ``out.partial`` first: an interrupted run leaves no store that looks complete.
    """
    out = Path(out)
    check_output_path(out, overwrite)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
    root, arr = _create_v2_store(partial, shape, chunks, dtype)
    try:
        for n, (index, block) in enumerate(blocks):
            arr[index] = block
            if on_block is not None:
                on_block(n)
        root.attrs.update(ome_metadata(voxel_size, unit, 1, out.stem, translation))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    partial.rename(out)
    return out
