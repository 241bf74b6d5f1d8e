"""npe2 reader: OME-Zarr (on disk or at a URL), zarr and TIFF volumes opened lazily, placed in the
world by their metadata (scale, translate, units) as ``open_volume`` reads it. What the plugin
claims, and why, is in docs/reading.md."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Volume, open_volume
from ..data.io import SourceError, is_url
from ..data.normalise import display_range
from ..errors import NiivInputError
from .context_menu import register_layer_context_action

_SUFFIXES = (".zarr", ".tif", ".tiff", ".czi", ".nd2", ".lif")  # the last three through bioio

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Claim one path or URL only if niiv can use it as a 3D grey volume; otherwise return None so
    that napari's own readers (or another plugin) get a chance.

    Decided by suffix, then by opening the header: ``open_volume`` parses the TIFF tags or the zarr
    metadata (over the network for a URL: metadata only) and memory-maps the pixels without reading
    them, so 2D, RGB, multichannel and unreadable files are turned down here for the cost of a
    header read, and the opened volume is reused. A volume whose metadata is unusable (voxel size
    0 or NaN), a URL that cannot be reached, or a file or store whose reading fails (garbled
    metadata, a missing level, not the TIFF its name says) is claimed, and reading it raises the
    reason: napari shows that message and offers its other readers, where a refusal would say nothing.
    """
    register_layer_context_action()  # napari loads the plugin lazily: this is one of its first calls
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    source: str | Path = str(path).rstrip("/") if is_url(str(path)) else Path(path)
    name = source if isinstance(source, str) else source.name
    # a zarr store is a folder with zarr metadata, whatever its name (napari-ome-zarr opens them too)
    zarr_folder = isinstance(source, Path) and any((source / m).is_file() for m in ("zarr.json", ".zgroup", ".zarray"))
    if not (name.lower().endswith(_SUFFIXES) or zarr_folder):
        return None
    if isinstance(source, str) and not name.lower().rstrip("/").endswith(".zarr"):
        return None  # from URLs niiv reads OME-Zarr only (a remote TIFF: napari's readers may)
    try:
        vol = open_volume(source)
    except NiivInputError as exc:
        if not (isinstance(exc, SourceError) or _damaged(exc)):
            return None  # not a volume niiv reconstructs (2D, RGB, a zarr group without OME metadata...)
        error = exc

        def fail(_path: str | list[str]) -> list[LayerData]:
            raise error

        return fail
    if vol.shape[0] < 2:  # one plane (a 2D image stored as a stack): nothing between planes; napari shows it
        return None

    def read(_path: str | list[str]) -> list[LayerData]:
        return [volume_layer_data(vol, source)]

    return read


def _damaged(exc: NiivInputError) -> bool:
    """A file or store niiv's reader failed on (its metadata garbled, a level or its header
    missing): the reason is said, where a refusal would leave the user with napari's bare "refused
    the file" and another reader that fails too or opens it wrongly."""
    return exc.__cause__ is not None and not isinstance(exc.__cause__, NiivInputError)


def volume_layer_data(vol: Volume, source: str | Path) -> LayerData:
    """Layer data for a lazy volume: the dask array as is (napari reads only the planes it shows),
    placed by the volume's voxel size, translation and unit (``open_volume`` read them: one home),
    with z, y, x axis labels, and contrast limits from the file's display window (OME-Zarr omero)
    or else from a strided sample, since napari would otherwise compute them from the whole array.

    A multiscale OME-Zarr opens as a multiscale layer (napari shows the level that fits the screen).
    """
    meta: dict[str, Any] = {
        "name": vol.name,
        "scale": tuple(vol.voxel_size),
        "translate": tuple(vol.translation),
        "axis_labels": ("z", "y", "x"),
        "contrast_limits": list(vol.contrast) if vol.contrast else contrast_limits(vol.data),
        "metadata": {"unit": vol.unit, "niiv_source": str(source)},
    }
    if vol.unit is not None:
        meta["units"] = (vol.unit,) * 3
    if vol.pyramid:
        meta["multiscale"] = True
        return ([vol.data, *vol.pyramid], meta, "image")
    return (vol.data, meta, "image")


def contrast_limits(data: Any) -> list[float]:
    """Robust percentiles of a strided sample (of its finite values: a NaN background is common in
    float volumes). A volume that has none (constant, e.g. a store not yet written, or all NaN)
    still opens, with its dtype's range (integers) or [0, 1] (floats)."""
    found = display_range(data)
    if found is None:
        dtype = np.dtype(data.dtype)
        if dtype.kind in "ui":
            return [float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)]
        return [0.0, 1.0]
    return list(found)
