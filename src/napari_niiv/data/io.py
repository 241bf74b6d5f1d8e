"""Open volumes lazily (TIFF, OME-TIFF, zarr, OME-Zarr 0.4/0.5 on disk or at a URL, npy, dask/numpy
arrays) as ZYX arrays with their voxel size, unit and translation.

Where a volume sits in the world follows napari's pixel-centre convention (see
``inference/geometry.py``): data index ``i`` is at ``i * voxel_size + translation``. Units are the
OME-NGFF names ("micrometer", "nanometer", ...), which napari's ``units=`` (pint) also understands.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..errors import NiivInputError

Triple = tuple[float, float, float]


class SourceError(NiivInputError):
    """A volume niiv should read but cannot: its metadata is unusable (voxel sizes of 0, NaN...) or its
    URL cannot be reached. Readers claim such a file and show this message, rather than leave it
    to another reader that would open it with wrong voxel sizes or fail without saying why."""


@dataclass
class Volume:
    """A 3D ZYX array (lazy where the source allows), its voxel size (z, y, x) in ``unit``, and the
    world position of voxel 0's centre (``translation``, same unit)."""

    data: da.Array
    voxel_size: Triple = (1.0, 1.0, 1.0)
    name: str = "volume"
    unit: str | None = None
    pyramid: tuple[da.Array, ...] = ()  # coarser levels of a multiscale store, finest first
    translation: Triple = (0.0, 0.0, 0.0)
    contrast: tuple[float, float] | None = None  # display window the file gives (OME-Zarr omero), if any

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def has_voxel_size(self) -> bool:
        """False when the source gave no voxel sizes (all 1 and no unit): its anisotropy is then unknown."""
        return self.unit is not None or tuple(self.voxel_size) != (1.0, 1.0, 1.0)

    @property
    def alpha(self) -> float:
        """Anisotropy: z voxel size over the in-plane voxel size."""
        return float(self.voxel_size[0]) / float(self.voxel_size[2])


def as_volume(source: Any, voxel_size: Triple | None = None, name: str = "volume") -> Volume:
    """Accept a path or URL, a numpy/dask/zarr array or a Volume; check it is a usable 3D grey volume."""
    if isinstance(source, Volume):
        vol = source
    elif isinstance(source, (str, Path)):
        vol = open_volume(source)
    else:
        vol = Volume(da.asarray(source) if not isinstance(source, da.Array) else source, name=name)
    if voxel_size is not None:
        try:
            given = tuple(float(v) for v in voxel_size)
        except (TypeError, ValueError):
            raise NiivInputError(f"voxel_size {voxel_size!r}: give three numbers (z, y, x)") from None
        if len(given) != 3 or not all(math.isfinite(v) and v > 0 for v in given):
            raise NiivInputError(f"voxel_size {voxel_size!r}: give three positive finite numbers (z, y, x)")
        vol = replace(vol, voxel_size=given)
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
    if min(shape) == 0:
        raise NiivInputError(f"the volume is empty (shape {shape}: an axis of length 0); open a volume with data")
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "uif" and dtype != np.bool_:
        raise NiivInputError(f"unsupported pixel type {dtype}; use an integer or floating-point volume")


# -- units ---------------------------------------------------------------------------------------

# OME-NGFF's length units and their size in metres (for converting axes given in different units).
NGFF_LENGTH_UNITS = {
    "angstrom": 1e-10,
    "attometer": 1e-18,
    "centimeter": 1e-2,
    "decimeter": 1e-1,
    "exameter": 1e18,
    "femtometer": 1e-15,
    "foot": 0.3048,
    "gigameter": 1e9,
    "hectometer": 1e2,
    "inch": 0.0254,
    "kilometer": 1e3,
    "megameter": 1e6,
    "meter": 1.0,
    "micrometer": 1e-6,
    "mile": 1609.344,
    "millimeter": 1e-3,
    "nanometer": 1e-9,
    "parsec": 3.0856775814913673e16,
    "petameter": 1e15,
    "picometer": 1e-12,
    "terameter": 1e12,
    "yard": 0.9144,
    "yoctometer": 1e-24,
    "yottameter": 1e24,
    "zeptometer": 1e-21,
    "zettameter": 1e21,
}
# Other spellings (ImageJ, OME-XML symbols, pint, British English) -> NGFF names; None: no unit.
_UNIT_ALIASES: dict[str, str | None] = {
    "um": "micrometer",
    "\u00b5m": "micrometer",  # micro sign
    "\u03bcm": "micrometer",  # Greek mu
    "micron": "micrometer",
    "microns": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "dm": "decimeter",
    "m": "meter",
    "km": "kilometer",
    "pm": "picometer",
    "fm": "femtometer",
    "\u00e5": "angstrom",  # A with ring
    "\u212b": "angstrom",  # Angstrom sign
    "in": "inch",
    "ft": "foot",
    "yd": "yard",
    "mi": "mile",
    "pixel": None,
    "pixels": None,
    "px": None,
    "": None,
}


def ngff_unit(unit: Any, strict: bool = False) -> str | None:
    """The NGFF name of a length unit given in any common spelling ("um", "µm", "micron", "nm",
    "nanometre", pint's units...); None for no unit ("pixel"). An unknown unit is None, or with
    ``strict`` a NiivInputError (for writing, where a wrong unit would be published)."""
    if unit is None:
        return None
    # ImageJ escapes non-ASCII characters in a TIFF's description: Fiji writes µm as backslash, u00B5, m
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), str(unit)).strip()
    key = text.lower().replace("metre", "meter")
    if key in _UNIT_ALIASES:
        return _UNIT_ALIASES[key]
    for name in (key, key.removesuffix("s")):
        if name in NGFF_LENGTH_UNITS:
            return name
    if strict:
        raise NiivInputError(
            f"unit {text!r} is not a length unit OME-Zarr knows; use one of micrometer, nanometer, millimeter, "
            "angstrom, ... (or none)"
        )
    return None


def common_unit(sizes: list[float], units: list[str | None]) -> tuple[list[float], str | None]:
    """Express per-axis sizes in one unit (the last axis's): OME files may give z in µm and x in nm."""
    known = [u for u in units if u is not None]
    if not known:
        return sizes, None
    ref = known[-1]
    out = [
        tidy(s * tidy(NGFF_LENGTH_UNITS[u] / NGFF_LENGTH_UNITS[ref])) if u not in (None, ref) else s
        for s, u in zip(sizes, units, strict=True)
    ]
    return out, ref


def tidy(value: float) -> float:
    """A unit conversion's result to 12 significant digits: 0.5 µm is 500 nm, not the
    499.99999999999994 that 1e-6 / 1e-9 gives, in the metadata a user reads and a store publishes."""
    return float(f"{value:.12g}") if math.isfinite(value) else value


def _checked(voxel: list[float] | tuple[float, ...], translation: list[float] | tuple[float, ...], where: Any):
    """Voxel sizes and translation from a file, or a NiivInputError saying what to fix."""
    v = tuple(float(s) for s in voxel)
    try:
        check_voxel_size(v)
    except NiivInputError:
        raise SourceError(
            f"{where}: the file gives voxel size {v} (z, y, x), which is not usable: each must be a positive "
            "finite number; fix the file's metadata (in Fiji: Image > Properties) or save it without voxel sizes"
        ) from None
    t = tuple(float(s) for s in translation)
    if not all(math.isfinite(s) for s in t):
        raise SourceError(f"{where}: the file gives translation {t} (z, y, x); fix it to finite numbers")
    return v, t


# -- opening -------------------------------------------------------------------------------------

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: Any) -> bool:
    """``https://``, ``http://``, ``s3://``, ``gs://``... (a Windows drive letter is not a scheme)."""
    return isinstance(path, str) and bool(_URL.match(path))


def local_path(path: str | Path) -> Path | None:
    """Where ``path`` lies on this machine: itself, or the path of a ``file://`` URL (which is as
    local as a path: the checks that protect an input, and its size and date, hold for it too);
    None for a remote URL."""
    if not is_url(path):
        return Path(path)
    from urllib.parse import urlparse
    from urllib.request import url2pathname  # it unquotes ('%20' -> ' ')

    parts = urlparse(str(path))
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
        return None
    return Path(url2pathname(parts.path))


def open_volume(path: str | Path, storage_options: dict[str, Any] | None = None) -> Volume:
    """Open a file, store or URL without reading it all: TIFF and OME-TIFF (memory-mapped where
    possible), zarr v2/v3, OME-Zarr 0.4/0.5 (highest resolution as ``data``, coarser levels as
    ``pyramid``, voxel sizes, unit and translation from its metadata), an OME-Zarr at an
    ``https://``/``http://``/``s3://`` URL (through fsspec; only the chunks used are fetched;
    ``storage_options`` go to fsspec), or .npy (memory-mapped)."""
    if is_url(path):
        vol = _open_remote(str(path), storage_options)
    else:
        p = Path(path)
        if not p.exists():
            raise NiivInputError(f"{p}: no such file or directory")
        vol = _open_any(p)
    check_volume(vol.data)
    return vol


def volume_name(path: str | Path) -> str:
    """A layer name for a path or URL: the file name without .ome.zarr, .ome.tif, .tif, .npy, ..."""
    name = str(path).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".zarr", ".tiff", ".tif", ".npy"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[:-4] if name.lower().endswith(".ome") else name


def _open_any(p: Path) -> Volume:
    try:
        if p.suffix.lower() in BIOIO_SUFFIXES:
            return open_bioio(p)
        if p.suffix.lower() in (".tif", ".tiff"):
            return _open_tiff(p)
        if p.suffix.lower() == ".npy":
            return Volume(da.from_array(np.load(p, mmap_mode="r"), chunks="auto"), name=volume_name(p))
        if p.is_dir() or p.suffix.lower() == ".zarr":
            import zarr

            if p.is_dir() and not any((p / marker).exists() for marker in ("zarr.json", ".zgroup", ".zarray")):
                raise NiivInputError(
                    f"{p}: a folder, but not a zarr or OME-Zarr store (no zarr.json, .zgroup or .zarray in it): "
                    "give the store's own folder, or a file"
                )
            if p.is_file():  # a zipped store (zarr's ZipStore; the store's root at the top of the zip)
                import zipfile

                if not zipfile.is_zipfile(p):
                    raise SourceError(
                        f"{p}: a file, not a zarr store (a store is a folder, or a zip of its contents); check the "
                        "path, or export it again"
                    )
                return _open_zarr(zarr.open(zarr.storage.ZipStore(p, mode="r"), mode="r"), p, volume_name(p))
            return _open_zarr(zarr.open(str(p), mode="r"), p, volume_name(p))
    except NiivInputError:
        raise
    except Exception as exc:
        raise NiivInputError(
            f"{p}: could not read it as a volume ({type(exc).__name__}: {exc}); the file may be damaged or "
            "not what its name says: check that it opens in Fiji or napari, or export it again"
        ) from exc
    raise NiivInputError(
        f"{p}: unknown format; niiv reads .tif/.tiff, .npy, .zarr and OME-Zarr, and {'/'.join(BIOIO_SUFFIXES)} "
        f"with the bioio extra ({BIOIO_EXTRA})"
    )


def _open_remote(url: str, storage_options: dict[str, Any] | None) -> Volume:
    """A zarr / OME-Zarr store at a URL through fsspec (HTTP needs aiohttp, S3 s3fs)."""
    import zarr

    url = url.rstrip("/")
    options = dict(storage_options) if storage_options is not None else _default_options(url)
    try:
        node = zarr.open(url, mode="r", storage_options=options)
        return _open_zarr(node, url, volume_name(url))
    except NiivInputError:
        raise
    except ImportError as exc:
        raise SourceError(f"{url}: reading this URL needs {exc.name}: pip install {exc.name}") from exc
    except Exception as exc:
        raise SourceError(
            f"{url}: could not open it as a zarr or OME-Zarr store ({type(exc).__name__}: {exc}); check the URL "
            "(it should point at the store's root, the folder holding zarr.json or .zattrs) and your connection"
        ) from exc


def _default_options(url: str) -> dict[str, Any]:
    """Public S3 buckets are read anonymously unless AWS credentials are configured."""
    if url.startswith("s3://") and not any(k in os.environ for k in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE")):
        return {"anon": True}
    return {}


@contextlib.contextmanager
def _tifffile_quiet() -> Iterator[None]:
    """tifffile logs what it finds wrong in a damaged file (bad page offsets, corrupt ImageJ
    metadata) on stderr, line by line; niiv's own message says it once, in one line."""
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _open_tiff(path: Path) -> Volume:
    import tifffile

    with _tifffile_quiet(), tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape = series.shape
        if "S" in series.axes and tif.pages[0].photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR):
            raise NiivInputError(
                f"{path}: an RGB TIFF (axes {series.axes}, shape {shape}); niiv reconstructs single-channel "
                "intensity volumes: convert to greyscale or save one channel"
            )
        _check_tiff_axes(series.axes, shape, path, tif.imagej_metadata if tif.is_imagej else None)
        voxel, unit = tiff_voxel_size(tif, path)
        if min(shape, default=0) > 0:  # an empty one is reported as empty by check_volume
            _check_complete(tif, path, int(np.prod(shape[:-2])) if len(shape) > 2 else 1)
    try:
        arr: Any = tifffile.memmap(path, mode="r")
    except (ValueError, OSError):
        import zarr

        # compressed or tiled: read through tifffile's zarr store of the first series' full resolution
        # (a pyramidal OME-TIFF's store is otherwise a group of its levels)
        arr = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")
        # a damaged strip or tile fails when it is shown, with a bare codec error: name the file
        arr = _DamagedChunks(arr, path, "a part of the file is damaged: copy or export it again")
    data = da.from_array(arr, chunks=_chunks_for(shape), name=False, asarray=False)
    return Volume(data, voxel or (1.0, 1.0, 1.0), volume_name(path), unit if voxel else None)


# tifffile's axis letters: Z, Y, X are space; Q and I (planes of a plain multi-page TIFF) are
# taken as z; S (samples: RGB) is refused on its own; any other axis of more than one is not z.
_TIFF_AXIS_NAMES = {"C": "channels", "T": "time points", "E": "wavelengths", "A": "angles", "P": "phases"}


def _check_tiff_axes(axes: str, shape: tuple[int, ...], path: Path, imagej: dict[str, Any] | None) -> None:
    """Refuse a TIFF whose planes are not z planes: a 2D time-lapse (TYX), or a 2D multichannel
    OME-TIFF (CYX), has three axes too, and would otherwise be reconstructed "between" its frames
    or channels as if they were sections. An ImageJ stack (``imagej``: its metadata) whose only
    stacking axis is C stays a z-stack unless ImageJ shows it as channels (mode composite or
    color): tifffile writes every 3D array it is given without axes so (``imwrite(..., imagej=True)``
    of a ZYX volume says "channels", mode grayscale)."""
    several = {a: n for a, n in zip(axes, shape, strict=False) if a not in "ZYXQIS" and n > 1}
    shown_as_channels = imagej is not None and str(imagej.get("mode", "")).lower() in ("composite", "color")
    if imagej is not None and set(several) == {"C"} and "Z" not in axes and not shown_as_channels:
        return
    if not several:
        return
    what = ", ".join(f"{n} {_TIFF_AXIS_NAMES.get(a, f'entries along axis {a}')}" for a, n in several.items())
    raise NiivInputError(
        f"{path}: holds {what} (axes {axes}, shape {tuple(shape)}), not one z-stack; niiv reconstructs one 3D "
        "(z, y, x) volume: save one channel at one time point (e.g. in Fiji) and open that; if these planes "
        "are really z sections, set them as slices in Fiji (Image > Properties)"
    )


def _check_complete(tif: Any, path: Path, planes: int) -> None:
    """A truncated TIFF (a copy cut short) names itself instead of failing mid-reconstruction: every
    page the series needs must exist and its pixel data must end inside the file. A series stored
    contiguously (ImageJ hyperstacks over 4 GB have one page for all their planes) must end inside it."""
    import warnings

    size = path.stat().st_size
    described = (tif.imagej_metadata or {}).get("images")  # ImageJ says how many planes it wrote
    described = int(described) if isinstance(described, (int, float)) else 1
    series = tif.series[0] if tif.series else None
    offset = getattr(series, "dataoffset", None)
    if offset is not None:  # one contiguous block: the planes described must fit in the file
        shape = tuple(series.shape)
        found = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        end = int(offset) + int(series.nbytes) // found * max(found, described, planes)
        if end > size:
            raise SourceError(
                f"{path}: the file is truncated or damaged (its {max(found, described, planes)} planes should reach "
                f"byte {end}, the file has {size}); copy or export it again"
            )
        return
    planes = max(planes, described)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tifffile logs each bad page offset; the message below says it once
        ends = [
            max((o + c for o, c in zip(p.dataoffsets, p.databytecounts, strict=False)), default=0) for p in tif.pages
        ]
    if max(ends, default=0) > size or len(ends) < planes:
        raise SourceError(
            f"{path}: the file is truncated or damaged ({len(ends)} of {planes} planes found, pixel data "
            f"reaching byte {max(ends, default=0)} of {size}); copy or export it again"
        )


# Microscope formats read through bioio's reader plugins (the ``bioio`` extra); TIFF stays with tifffile.
BIOIO_SUFFIXES = (".czi", ".nd2", ".lif")
# what the `bioio` extra installs, named package by package: they are on PyPI, napari-niiv not yet
BIOIO_EXTRA = "pip install bioio bioio-ome-tiff bioio-czi bioio-nd2 bioio-lif"


def open_bioio(path: str | Path) -> Volume:
    """A Zeiss CZI, Nikon ND2 or Leica LIF file (or any file a bioio reader plugin reads) through
    bioio, lazily: the default (first) scene's ZYX data as dask, and its physical pixel sizes, which
    bioio gives in micrometres. Without a z size the voxel sizes are unknown, as for TIFF. Several
    channels or time points are refused with their sizes: niiv reconstructs one 3D volume. Without
    the extra (or the format's reader plugin) a SourceError says what to install."""
    p = Path(path)
    try:
        from bioio import BioImage
    except ImportError:
        raise SourceError(f"{p}: reading {p.suffix} files needs bioio and its readers: {BIOIO_EXTRA}") from None
    try:
        img = BioImage(p)
    except Exception as exc:
        if type(exc).__name__ == "UnsupportedFileFormatError":  # bioio found no reader plugin for it
            raise SourceError(f"{p}: no bioio reader for {p.suffix} files is installed: {BIOIO_EXTRA}") from exc
        raise
    sizes = dict(zip(img.dims.order, img.dims.shape, strict=True))
    if sizes.get("S", 1) > 1:
        raise NiivInputError(
            f"{p}: an RGB image ({sizes['S']} samples per pixel); niiv reconstructs single-channel intensity "
            "volumes: convert to greyscale or save one channel"
        )
    several = {d: n for d, n in sizes.items() if d not in "ZYX" and n > 1}
    if several:
        what = ", ".join(f"{n} {dict(C='channels', T='time points').get(d, d)}" for d, n in several.items())
        raise NiivInputError(
            f"{p}: holds {what} (dims {img.dims.order}, shape {img.dims.shape}); niiv reconstructs one 3D "
            "volume: save one channel at one time point (e.g. in Fiji) and open that"
        )
    data = img.get_image_dask_data("ZYX")
    pps = img.physical_pixel_sizes
    voxel: Triple | None = None
    if None not in (pps.Z, pps.Y, pps.X):
        voxel = _checked([pps.Z, pps.Y, pps.X], (0, 0, 0), p)[0]
    name = p.stem if p.suffix.lower() in BIOIO_SUFFIXES else volume_name(p)
    return Volume(data, voxel or (1.0, 1.0, 1.0), name, "micrometer" if voxel else None)


def _chunks_for(shape: tuple[int, ...]) -> tuple[int, ...]:
    """z slabs of 32 planes in 512x512 tiles; trailing axes beyond ZYX (colour) whole."""
    base = (32, 512, 512)[-len(shape) :] if len(shape) <= 3 else (32, 512, 512, *shape[3:])
    return tuple(min(s, c) for s, c in zip(shape, base, strict=True))


def tiff_voxel_size(tif: Any, where: Any = "TIFF") -> tuple[Triple | None, str | None]:
    """(voxel size z, y, x, unit) of a TIFF, or (None, None) when it does not give the z spacing.

    OME-TIFF: the OME-XML ``PhysicalSizeX/Y/Z`` and their units (µm when not stated), converted to
    one unit. ImageJ: ``spacing`` (z) and ``unit`` in the description, x and y from the resolution
    tags (pixels per unit). Any other TIFF has no voxel sizes: its resolution tags (dots per inch)
    describe printing, not the sample. Without a z spacing the anisotropy is unknown, so xy alone are
    not used either (the volume then has unknown voxel sizes, and alpha is given by hand).
    """
    if getattr(tif, "is_ome", False) and tif.ome_metadata:
        sizes, units = _ome_xml_sizes(tif.ome_metadata)
        if sizes is None:
            return None, None
        voxel, unit = common_unit(sizes, units)
        return _checked(voxel, (0, 0, 0), where)[0], unit
    ij = tif.imagej_metadata or {}
    if "spacing" not in ij:
        return None, None
    page = tif.pages[0]
    xy = []
    for tag in ("YResolution", "XResolution"):
        t = page.tags.get(tag)
        num, den = t.value if t is not None else (1, 1)
        xy.append(den / num if num else math.inf)
    voxel = _checked([float(ij["spacing"]), *xy], (0, 0, 0), where)[0]
    return voxel, ngff_unit(ij.get("unit"))


def _ome_xml_sizes(xml: str) -> tuple[list[float] | None, list[str | None]]:
    """PhysicalSizeZ/Y/X and their units from the first image's Pixels element of an OME-XML."""
    import xml.etree.ElementTree as ET

    pixels = next((e for e in ET.fromstring(xml).iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeZ" not in pixels.attrib or "PhysicalSizeX" not in pixels.attrib:
        return None, []
    a = pixels.attrib
    sizes = [float(a["PhysicalSizeZ"]), float(a.get("PhysicalSizeY", a["PhysicalSizeX"])), float(a["PhysicalSizeX"])]
    units = [ngff_unit(a.get(f"PhysicalSize{ax}Unit", "\u00b5m")) for ax in "ZYX"]
    return sizes, units


class _DamagedChunks:
    """A zarr array whose read errors (a chunk cut short or corrupted: a bare codec error such as
    'Zstd decompression error') name the store and say what to do (``remedy``), in one line."""

    def __init__(self, array: Any, where: Any, remedy: str | None = None) -> None:
        self.array, self.where, self.remedy = array, where, remedy
        self.shape, self.dtype, self.ndim = tuple(array.shape), array.dtype, array.ndim

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            return np.asarray(self.array[index])
        except Exception as exc:
            remedy = self.remedy or (
                "check the connection and try again; if it persists, the store is damaged"
                if is_url(str(self.where))
                else "a chunk file is damaged or cut short: copy or export the store again"
            )
            what = f"{type(exc).__name__}: {exc}"
            raise SourceError(f"{self.where}: part of its data cannot be read ({what}); {remedy}") from exc


def _zarr_dask(array: Any, where: Any) -> da.Array:
    """A zarr array as dask, chunk for chunk, with read errors said in one line (_DamagedChunks)."""
    return da.from_array(_DamagedChunks(array, where), chunks=array.chunks, name=False, asarray=False)


def _open_zarr(root: Any, where: Any, name: str) -> Volume:
    """A zarr array, or the first image of an OME-Zarr group (0.4, 0.5 or a bioformats2raw wrapper).
    An array that is one level of an OME-Zarr image (``store.ome.zarr/0``) gets that level's voxel
    sizes, translation and unit from the image's metadata, which lives beside it, not in it."""
    import zarr

    if isinstance(root, zarr.Array):
        found = _enclosing_image(where)
        if found is None:
            if isinstance(where, Path):
                _check_finished(where.parent, where)
            return Volume(_zarr_dask(root, where), name=name)
        ome, ms, level = found
        return _placed(ome, ms, [_zarr_dask(root, where)], level, where, name)
    attrs = root.attrs.asdict()
    ome = attrs.get("ome", attrs)
    if "multiscales" not in ome and "bioformats2raw.layout" in ome and "0" in root:
        return _open_zarr(root["0"], where, name)
    multiscales = ome.get("multiscales")
    if not multiscales:
        if isinstance(where, Path):
            _check_finished(where, where)
        names = [k for k, _ in root.arrays()]
        raise NiivInputError(
            f"{where}: a zarr group without OME-Zarr multiscales metadata; open one of its arrays "
            f"instead ({', '.join(names) or 'none found'})"
        )
    ms = multiscales[0]
    return _placed(ome, ms, [_zarr_dask(root[d["path"]], where) for d in ms["datasets"]], 0, where, name)


def _check_finished(store: Path, where: Path) -> None:
    """Refuse a store niiv is still writing, or whose writing stopped (``OUT.partial``: the job
    record in ``.niiv/``, no multiscales metadata yet): its unwritten chunks would read as zeros."""
    if (store / ".niiv" / "job.json").is_file():  # inference.store's work folder (_WORK)
        raise SourceError(
            f"{where}: an unfinished save by napari-niiv (its chunks not yet written read as zeros); saving again "
            "to the same output with the same settings finishes it (Save isotropic volume..., niiv reconstruct)"
        )


def _enclosing_image(path: Any) -> tuple[dict[str, Any], dict[str, Any], int] | None:
    """(the group's OME metadata, its multiscales entry, the level) when the local zarr array at
    ``path`` is a level of the OME-Zarr image in the folder above it; else None."""
    import zarr

    if not isinstance(path, Path):
        return None
    try:
        attrs = zarr.open_group(str(path.parent), mode="r").attrs.asdict()
    except Exception:  # no zarr group above: a plain array
        return None
    ome = attrs.get("ome", attrs)
    for ms in ome.get("multiscales") or []:
        paths = [str(d.get("path")) for d in ms.get("datasets") or []]
        if path.name in paths:
            return ome, ms, paths.index(path.name)
    return None


def _placed(
    ome: dict[str, Any], ms: dict[str, Any], levels: list[da.Array], first: int, where: Any, name: str
) -> Volume:
    """An OME-Zarr image's ``levels`` from dataset ``first`` on, with that dataset's voxel sizes,
    translation and unit, and the image's display window. Spatial axes stored in another order
    than z, y, x (NGFF only recommends zyx) are brought to it; a label image (a segmentation), or
    a 2D image whose channels or time points would stand where z is, is refused."""
    if "image-label" in ome:
        raise NiivInputError(
            f"{where}: an OME-Zarr label image (a segmentation), not an intensity volume; niiv reconstructs "
            "intensity images: open the image it labels (the store's root), and its labels with napari-ome-zarr"
        )
    ndim = levels[0].ndim
    axes = _axes(ms, ndim)
    scale, shift = ome_transform(ms, ndim, first)
    kept = _kept_axes(axes, levels[0].shape, where)
    spatial = [i for i in kept if _is_space(axes[i])][-3:]
    order = _zyx_order([str(axes[i].get("name", "")).lower() for i in spatial])
    spatial = [spatial[k] for k in order]
    pad = 3 - len(spatial)  # a 2D store: check_volume says what is wrong with it
    sizes = [1.0] * pad + [scale[i] for i in spatial]
    units = [None] * pad + [ngff_unit(axes[i].get("unit")) for i in spatial]
    voxel_list, unit = common_unit(sizes, units)
    factors = [
        v / s if s else 1.0 for v, s in zip(voxel_list, sizes, strict=True)
    ]  # unit conversion, applied to shifts too
    translation = [0.0] * pad + [tidy(shift[i] * f) for i, f in zip(spatial, factors[pad:], strict=True)]
    voxel, t = _checked(voxel_list, translation, where)
    data, *pyramid = (_spatial(lv, axes, kept, order) for lv in levels)
    pyramid = tuple(lv for lv in pyramid if lv.ndim == data.ndim)
    return Volume(data, voxel, name, unit, pyramid, t, _omero_window(ome.get("omero")))


def _is_space(axis: dict[str, Any]) -> bool:
    return axis.get("type") == "space" or axis.get("name") in ("z", "y", "x")


def _kept_axes(axes: list[dict[str, Any]], shape: tuple[int, ...], where: Any) -> list[int]:
    """The axes a volume keeps: the spatial ones, and any other of length over 1, which is refused
    in words when the spatial ones are fewer than three (a (c, y, x) store is a 2D image, not a
    z-stack of its channels) and left to check_volume otherwise (more than three dimensions)."""
    if len(axes) != len(shape):
        return list(range(len(shape)))
    kept = [i for i, (a, n) in enumerate(zip(axes, shape, strict=True)) if _is_space(a) or n > 1]
    others = [i for i in kept if not _is_space(axes[i])]
    if others and len(kept) == 3:
        what = ", ".join(f"{shape[i]} along {axes[i].get('name')!r} ({axes[i].get('type', 'no type')})" for i in others)
        names = ", ".join(str(a.get("name")) for a in axes)
        raise NiivInputError(
            f"{where}: a 2D image with {what} (axes {names}, shape {tuple(shape)}), not a z-stack; niiv "
            "reconstructs one 3D (z, y, x) volume"
        )
    return kept


def _zyx_order(names: list[str]) -> list[int]:
    """Where z, y and x are among three spatial axis names (identity unless they are those three)."""
    if sorted(names) != ["x", "y", "z"]:
        return list(range(len(names)))
    return [names.index(n) for n in ("z", "y", "x")]


def _omero_window(omero: Any) -> tuple[float, float] | None:
    """start and end of the first channel's omero window, when given as two ordered numbers."""
    try:
        window = omero["channels"][0]["window"]
        lo, hi = float(window["start"]), float(window["end"])
    except (TypeError, KeyError, IndexError, ValueError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and lo < hi else None


def _axes(ms: dict[str, Any], ndim: int) -> list[dict[str, Any]]:
    """Axes as dicts (NGFF 0.3 lists names only; 0.1/0.2 none: then the last three are z, y, x)."""
    axes = ms.get("axes")
    if not axes:
        return [{"name": n} for n in ("t", "c", "z", "y", "x")[-ndim:]]
    return [a if isinstance(a, dict) else {"name": a} for a in axes]


def ome_transform(ms: dict[str, Any], ndim: int, level: int = 0) -> tuple[list[float], list[float]]:
    """Per-axis (scale, translation) of dataset ``level``: its own transformations, then the
    multiscale-wide ones (world = s_ms * (s_ds * i + t_ds) + t_ms)."""
    s_ds, t_ds = _scale_translation(ms["datasets"][level], ndim)
    s_ms, t_ms = _scale_translation(ms, ndim)
    return [a * b for a, b in zip(s_ds, s_ms, strict=True)], [
        t * s + u for t, s, u in zip(t_ds, s_ms, t_ms, strict=True)
    ]


def _scale_translation(node: dict[str, Any], ndim: int) -> tuple[list[float], list[float]]:
    scale, shift = [1.0] * ndim, [0.0] * ndim
    for t in node.get("coordinateTransformations") or []:
        kind = t.get("type")
        if kind in ("scale", "translation") and "path" in t and kind not in t:
            raise SourceError(f"OME-Zarr {kind} stored in a separate array ({t['path']}) is not supported")
        if kind in ("scale", "translation"):
            values = [float(v) for v in t[kind]]
            if len(values) != ndim:
                raise SourceError(
                    f"an OME-Zarr {kind} has {len(values)} values for {ndim} axes; fix the store's metadata"
                )
            if kind == "scale":
                scale = values
            else:
                shift = values
    return scale, shift


def _spatial(data: da.Array, axes: list[dict[str, Any]], kept: list[int], order: list[int]) -> da.Array:
    """Drop singleton time/channel axes so a (1, 1, z, y, x) store opens as a volume, and bring its
    spatial axes to z, y, x (``order``: where each of them is among the spatial axes kept)."""
    if len(axes) != data.ndim:
        return data
    data = data[tuple(slice(None) if i in kept else 0 for i in range(data.ndim))]
    if order != sorted(order):
        lead = data.ndim - len(order)
        data = data.transpose(*range(lead), *(lead + k for k in order))
    return data


def describe(vol: Volume) -> str:
    """One-line human summary for `niiv info` and logs. Voxel sizes the file does not give are
    null, not the (1, 1, 1) niiv works in until told alpha (unknown is not alpha 1)."""
    return json.dumps(
        {
            "name": vol.name,
            "shape_zyx": vol.shape,
            "dtype": str(vol.data.dtype),
            "voxel_size_zyx": vol.voxel_size if vol.has_voxel_size else None,
            "translation_zyx": vol.translation,
            "unit": vol.unit,
        }
    )


def check_voxel_size(voxel_size: Any) -> None:
    """Voxel sizes must be three positive finite numbers; the message says what to do."""
    import math

    if len(voxel_size) != 3 or not all(math.isfinite(v) and v > 0 for v in voxel_size):
        raise NiivInputError(
            f"voxel size {tuple(voxel_size)} is not usable: each of z, y, x must be a positive finite number; "
            "fix the file's metadata, or pass --alpha to ignore it"
        )
