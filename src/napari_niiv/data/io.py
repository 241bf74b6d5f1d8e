"""Open volumes lazily (TIFF, zarr, OME-Zarr, npy, dask/numpy arrays) as ZYX arrays with voxel sizes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..errors import NiivInputError


@dataclass
class Volume:
    """A 3D ZYX array (lazy where the source allows) and its voxel size (z, y, x), any unit."""

    data: da.Array
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    name: str = "volume"
    unit: str | None = None
    pyramid: tuple[da.Array, ...] = ()  # coarser levels of a multiscale store, finest first

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def has_voxel_size(self) -> bool:
        """False when the source gave no voxel sizes (all 1): its anisotropy is then unknown."""
        return self.voxel_size != (1.0, 1.0, 1.0)

    @property
    def alpha(self) -> float:
        """Anisotropy: z voxel size over the in-plane voxel size."""
        return float(self.voxel_size[0]) / float(self.voxel_size[2])


def as_volume(source: Any, voxel_size: tuple[float, float, float] | None = None, name: str = "volume") -> Volume:
    """Accept a path, a numpy/dask/zarr array or a Volume; check it is a usable 3D grey volume."""
    if isinstance(source, Volume):
        vol = source
    elif isinstance(source, (str, Path)):
        vol = open_volume(source)
    else:
        vol = Volume(da.asarray(source) if not isinstance(source, da.Array) else source, name=name)
    if voxel_size is not None:
        vol = Volume(vol.data, tuple(float(v) for v in voxel_size), vol.name, vol.unit)  # type: ignore[arg-type]
    check_volume(vol.data)
    return vol


def check_volume(data: Any) -> None:
    """Reject what niiv cannot reconstruct, with a message that says what to do instead."""
    shape = tuple(data.shape)
    if len(shape) == 4 and shape[-1] in (3, 4):
        raise NiivInputError(
            f"this looks like an RGB(A) volume (shape {shape}); niiv reconstructs single-channel "
            "intensity volumes: convert to greyscale or pick one channel first"
        )
    if len(shape) != 3:
        raise NiivInputError(
            f"niiv needs a 3D (z, y, x) volume, got {len(shape)}D with shape {shape}; "
            "for a 2D image there is nothing to reconstruct along z, and for time series or "
            "channels select one 3D volume first"
        )
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "uif" and dtype != np.bool_:
        raise NiivInputError(f"unsupported pixel type {dtype}; use an integer or floating-point volume")


def open_volume(path: str | Path) -> Volume:
    """Open a file or store without reading it all: TIFF (memory-mapped where possible), zarr
    v2/v3, OME-Zarr (highest resolution as ``data``, coarser levels as ``pyramid``, voxel sizes from
    its metadata) or .npy (memory-mapped)."""
    p = Path(path)
    if not p.exists():
        raise NiivInputError(f"{p}: no such file or directory")
    vol = _open_any(p)
    check_volume(vol.data)
    return vol


def _open_any(p: Path) -> Volume:
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            return _open_tiff(p)
        if p.suffix.lower() == ".npy":
            return Volume(da.from_array(np.load(p, mmap_mode="r"), chunks="auto"), name=p.stem)
        if p.is_dir() or p.suffix.lower() == ".zarr":
            return _open_zarr(p)
    except NiivInputError:
        raise
    except Exception as exc:
        raise NiivInputError(f"{p}: could not read it as a volume ({type(exc).__name__}: {exc})") from exc
    raise NiivInputError(f"{p}: unknown format; niiv reads .tif/.tiff, .npy, .zarr and OME-Zarr")


def _open_tiff(path: Path) -> Volume:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape = series.shape
        voxel = _tiff_voxel_size(tif)
        unit = _unit_name((tif.imagej_metadata or {}).get("unit"))
        if "S" in series.axes and tif.pages[0].photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR):
            raise NiivInputError(
                f"{path}: an RGB TIFF (axes {series.axes}, shape {shape}); niiv reconstructs single-channel "
                "intensity volumes: convert to greyscale or save one channel"
            )
    try:
        arr: Any = tifffile.memmap(path, mode="r")
    except (ValueError, OSError):
        arr = tifffile.imread(path, aszarr=True)
        import zarr

        arr = zarr.open(arr, mode="r")
    data = da.from_array(arr, chunks=_chunks_for(shape))
    vol = Volume(data, voxel, path.stem)
    vol.unit = unit if vol.has_voxel_size else None
    return vol


# ImageJ spellings -> OME-NGFF unit names.
_UNITS = {
    "um": "micrometer",
    "micron": "micrometer",
    "\u00b5m": "micrometer",  # micro sign
    "\u03bcm": "micrometer",  # Greek mu
    "nm": "nanometer",
    "mm": "millimeter",
    "pixel": None,
}


def _unit_name(unit: str | None) -> str | None:
    if not unit:
        return None
    return _UNITS.get(unit.strip().lower(), unit.strip())


def _chunks_for(shape: tuple[int, ...]) -> tuple[int, ...]:
    """z slabs of 32 planes in 512x512 tiles; trailing axes beyond ZYX (colour) whole."""
    base = (32, 512, 512)[-len(shape) :] if len(shape) <= 3 else (32, 512, 512, *shape[3:])
    return tuple(min(s, c) for s, c in zip(shape, base, strict=True))


def _tiff_voxel_size(tif: Any) -> tuple[float, float, float]:
    """Voxel size from ImageJ metadata (spacing) and the resolution tags, else 1."""
    z = y = x = 1.0
    ij = tif.imagej_metadata or {}
    if "spacing" in ij:
        z = float(ij["spacing"])
    page = tif.pages[0]
    for tag, setter in (("XResolution", "x"), ("YResolution", "y")):
        t = page.tags.get(tag)
        if t is not None:
            num, den = t.value
            if num:
                if setter == "x":
                    x = den / num
                else:
                    y = den / num
    if "spacing" not in ij:
        return (1.0, 1.0, 1.0) if (x, y) == (1.0, 1.0) else (x, y, x)
    return (z, y, x)


def _open_zarr(path: Path) -> Volume:
    import zarr

    root = zarr.open(str(path), mode="r")
    if isinstance(root, zarr.Array):
        return Volume(da.from_zarr(root), name=path.stem)
    attrs = dict(root.attrs)
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales")
    if not multiscales:
        names = [k for k, _ in root.arrays()]
        raise NiivInputError(
            f"{path}: a zarr group without OME-Zarr multiscales metadata; open one of its arrays "
            f"instead ({', '.join(names) or 'none found'})"
        )
    ms = multiscales[0]
    ds = ms["datasets"][0]
    voxel = _ome_scale(ds, ms)
    axes = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", [])]
    units = [a.get("unit") for a in ms.get("axes", []) if isinstance(a, dict) and a.get("type", "space") == "space"]
    levels = [_spatial(da.from_zarr(root[d["path"]]), axes) for d in ms["datasets"]]
    unit = units[-1] if units else None
    pyramid = tuple(lv for lv in levels[1:] if lv.ndim == levels[0].ndim)
    return Volume(levels[0], tuple(float(v) for v in voxel[-3:]), path.stem, unit, pyramid)  # type: ignore[arg-type]


def _spatial(data: da.Array, axes: list[str]) -> da.Array:
    """Drop singleton time/channel axes so a (1, 1, z, y, x) store opens as a volume."""
    if len(axes) == data.ndim and data.ndim > 3:
        index = tuple(0 if (a not in "zyx" and n == 1) else slice(None) for a, n in zip(axes, data.shape, strict=True))
        return data[index]
    return data


def _ome_scale(dataset: dict[str, Any], multiscale: dict[str, Any]) -> list[float]:
    scale = [1.0]
    for t in dataset.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = list(t["scale"])
    for t in multiscale.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = [a * b for a, b in zip(scale, t["scale"], strict=False)]
    if len(scale) < 3:
        scale = [1.0] * (3 - len(scale)) + scale
    return scale


def describe(vol: Volume) -> str:
    """One-line human summary for `niiv info` and logs."""
    return json.dumps(
        {
            "name": vol.name,
            "shape_zyx": vol.shape,
            "dtype": str(vol.data.dtype),
            "voxel_size_zyx": vol.voxel_size,
            "unit": vol.unit,
        }
    )
