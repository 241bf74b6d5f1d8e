"""npe2 reader: zarr, OME-Zarr and TIFF volumes opened lazily, with their voxel sizes as the layer scale."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Volume, fit_normalisation, open_volume
from ..errors import NiivInputError
from .context_menu import register_layer_context_action

_SUFFIXES = (".zarr", ".tif", ".tiff")

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Claim one path only if niiv can use it as a 3D grey volume; otherwise return None so that napari's
    own readers (or another plugin) get a chance.

    Decided by suffix, then by opening the header: ``open_volume`` parses the TIFF tags or the zarr
    metadata and memory-maps the pixels without reading them, so 2D, RGB, multichannel and unreadable
    files are turned down here for the cost of a header read, and the opened volume is reused.
    """
    register_layer_context_action()  # napari loads the plugin lazily: this is one of its first calls
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if not p.name.lower().endswith(_SUFFIXES):
        return None
    try:
        vol = open_volume(p)
    except NiivInputError:
        return None

    def read(_path: str | list[str]) -> list[LayerData]:
        return [volume_layer_data(vol, p)]

    return read


def volume_layer_data(vol: Volume, source: Path) -> LayerData:
    """Layer data for a lazy volume: the dask array as is (napari reads only the planes it shows), the file's
    voxel sizes as scale, and contrast limits from a strided sample, since napari would otherwise compute
    them from the whole array.

    A multiscale OME-Zarr opens as a multiscale layer (napari shows the level that fits the screen), with
    the store's translation so that a saved crop or reconstruction lands where it was.
    """
    meta: dict[str, Any] = {
        "name": vol.name,
        "scale": tuple(vol.voxel_size),
        "contrast_limits": contrast_limits(vol.data),
        "metadata": {"unit": vol.unit, "niiv_source": str(source)},
    }
    translate = ome_translation(source)
    if translate is not None:
        meta["translate"] = translate
    if vol.pyramid:
        meta["multiscale"] = True
        return ([vol.data, *vol.pyramid], meta, "image")
    return (vol.data, meta, "image")


def contrast_limits(data: Any) -> list[float]:
    """Robust percentiles of a strided sample. A volume that has none (constant, e.g. a store not yet
    written, or with NaNs) still opens, with its dtype's range (integers) or [0, 1] (floats)."""
    try:
        norm = fit_normalisation(data)
    except NiivInputError:
        dtype = np.dtype(data.dtype)
        if dtype.kind in "ui":
            return [float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)]
        return [0.0, 1.0]
    return [norm.low, norm.high]


def ome_translation(path: Path) -> tuple[float, float, float] | None:
    """(z, y, x) translation of an OME-Zarr's first dataset (NGFF: the dataset's translation, then the
    multiscale-wide scale and translation), or None when the path is not OME-Zarr or has none."""
    if path.suffix.lower() != ".zarr":
        return None
    import zarr

    root = zarr.open(str(path), mode="r")
    if isinstance(root, zarr.Array):
        return None
    attrs = dict(root.attrs)
    ms = attrs.get("ome", attrs)["multiscales"][0]
    t = np.asarray(_transform(ms["datasets"][0], "translation", 0.0)) * np.asarray(
        _transform(ms, "scale", 1.0)
    ) + np.asarray(_transform(ms, "translation", 0.0))
    if not t.any():
        return None
    return tuple(float(v) for v in t[-3:])  # type: ignore[return-value]


def _transform(node: dict[str, Any], kind: str, default: float) -> list[float] | float:
    for t in node.get("coordinateTransformations", []):
        if t.get("type") == kind:
            return list(t[kind])
    return default
