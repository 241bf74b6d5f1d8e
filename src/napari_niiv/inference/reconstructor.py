"""The one place that turns a niiv model into pixels: slices, blocks with halos, whole volumes.

Geometry. A volume has ZYX shape ``(Z, Y, X)``; z is ``alpha`` times coarser than y and x. The
isotropic output at ``scale`` s (output voxel = s in-plane voxels) has shape
``(round(Z * alpha / s), round(Y / s), round(X / s))``. Output index k along an axis sits at the
continuous input coordinate ``(k + 0.5) * step`` with ``step = n_in / n_out`` (input pixel ``i``
covers ``[i, i + 1)``). Every output voxel is therefore a function of its global index alone,
which is why blocks of any size, cut with enough halo, reproduce the untiled volume.

An xz reconstruction decodes, for each output y, the xz plane at that y (linearly interpolated
between acquired planes when it falls between them); yz likewise along x; ``both`` averages them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..data.degrade import check_alpha
from ..data.io import Volume, as_volume, open_volume
from ..data.normalise import Normalisation, fit_normalisation
from ..errors import NiivInputError
from ..model import NiivModel
from .engine import InferenceEngine

Orientation = Literal["xz", "yz", "both"]
ORIENTATIONS: tuple[str, ...] = ("xz", "yz", "both")


def output_shape(shape: tuple[int, int, int], alpha: float, scale: float = 1.0) -> tuple[int, int, int]:
    z, y, x = shape
    return (max(1, round(z * alpha / scale)), max(1, round(y / scale)), max(1, round(x / scale)))


def output_coords(n_in: int, n_out: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Continuous input coordinates of output indices ``start..stop`` along one axis."""
    stop = n_out if stop is None else stop
    return (np.arange(start, stop, dtype=np.float64) + 0.5) * (n_in / n_out)


def pixel_range(coords: np.ndarray, n_in: int, halo: int) -> tuple[int, int]:
    """Input pixels ``[lo, hi)`` a block whose output coordinates are ``coords`` needs."""
    lo = int(np.floor(coords.min())) - halo
    hi = int(np.ceil(coords.max())) + halo
    return max(0, lo), min(n_in, hi)


def interpolate_planes(block: np.ndarray, coords: np.ndarray, axis: int, offset: int) -> np.ndarray:
    """Planes of ``block`` at continuous ``coords`` along ``axis`` (linear, border-clamped).

    At scale 1 the coordinates are plane centres and this returns the acquired planes untouched.
    """
    n = block.shape[axis]
    pos = np.clip(coords - 0.5 - offset, 0.0, n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo).astype(np.float32)
    a = np.take(block, lo, axis=axis)
    if not np.any(w):
        return a
    b = np.take(block, hi, axis=axis)
    shape = [1] * block.ndim
    shape[axis] = -1
    return a * (1 - w.reshape(shape)) + b * w.reshape(shape)


@dataclass
class Reconstructor:
    """A model on a device, ready to decode normalised slices and blocks.

    ``slice_batch`` bounds how many planes are encoded together (memory), ``tile`` how many input
    columns one encoder pass sees; ``precision`` and ``compiled`` choose the engine's fast paths
    (see engine.py; "fp32" reproduces the model exactly).
    """

    model: NiivModel
    alpha: float
    device: torch.device | str = "cpu"
    slice_batch: int = 16
    tile: int = 256
    precision: str = "auto"
    compiled: bool = False

    def __post_init__(self) -> None:
        self.alpha = check_alpha(self.alpha)
        self.device = torch.device(self.device)
        self.engine = InferenceEngine(self.model, self.device, self.precision, self.compiled)
        self.model = self.engine.model

    @property
    def halo(self) -> int:
        """Input pixels of context a tile needs: the encoder's receptive radius, plus the attention
        neighbourhood (one output voxel) and the bilinear footprint (one pixel)."""
        return self.model.config.receptive_radius + 2

    def planes(self, low: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Decode planes ``low`` (P, h, w) (normalised) at output coordinates ``rows`` x ``cols``.

        Columns are processed in tiles of ``tile`` input pixels with halos, so arbitrarily wide
        planes fit in memory and give the same result as one pass.
        """
        low = np.asarray(low, dtype=np.float32)
        if low.ndim != 3:
            raise ValueError(f"expected (planes, rows, cols), got shape {low.shape}")
        if not np.all(np.isfinite(low)):
            raise NiivInputError("the volume contains NaN or infinite values; replace them before reconstruction")
        out = np.empty((low.shape[0], rows.size, cols.size), dtype=np.float32)
        r = torch.as_tensor(rows, dtype=torch.float32)
        for p0 in range(0, low.shape[0], self.slice_batch):
            for c0, c1, sel in _column_tiles(cols, low.shape[2], self.tile):
                lo, hi = pixel_range(cols[sel], low.shape[2], self.halo)
                lo, hi = min(lo, c0), max(hi, c1)
                x = torch.from_numpy(np.ascontiguousarray(low[p0 : p0 + self.slice_batch, :, lo:hi])).unsqueeze(1)
                grid = self.engine.encode(x, self.alpha)
                c = torch.as_tensor(cols[sel] - lo, dtype=torch.float32)
                out[p0 : p0 + self.slice_batch, :, sel] = self.engine.render(grid, r, c).cpu().numpy()
        return out

    def block(
        self,
        source: Any,
        shape_out: tuple[int, int, int],
        index: tuple[slice, slice, slice],
        orientation: Orientation = "xz",
    ) -> np.ndarray:
        """Normalised output block ``index`` of the isotropic volume; ``source`` is the normalised
        input (anything sliceable ZYX), read only around the block (halo included)."""
        if orientation not in ORIENTATIONS:
            raise NiivInputError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
        n_in = tuple(int(s) for s in source.shape)
        coords = [output_coords(n_in[a], shape_out[a], index[a].start, index[a].stop) for a in range(3)]
        ranges = [pixel_range(coords[a], n_in[a], self.halo) for a in range(3)]
        data = np.asarray(source[tuple(slice(lo, hi) for lo, hi in ranges)], dtype=np.float32)
        rows = coords[0] - ranges[0][0]
        result = None
        for orient in ("xz", "yz") if orientation == "both" else (orientation,):
            # xz: planes are y positions, columns are x; yz: planes are x positions, columns are y.
            plane_axis, col_axis = (1, 2) if orient == "xz" else (2, 1)
            planes = interpolate_planes(data, coords[plane_axis], plane_axis, ranges[plane_axis][0])
            planes = np.moveaxis(planes, plane_axis, 0)  # (P, z, cols)
            dec = self.planes(planes, rows, coords[col_axis] - ranges[col_axis][0])
            dec = np.moveaxis(dec, 0, plane_axis)
            result = dec if result is None else (result + dec) * 0.5
        assert result is not None
        return result


def _column_tiles(cols: np.ndarray, width: int, tile: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Split output columns into groups whose coordinates fall in consecutive ``tile``-wide input
    column ranges; yields (first, last input column, boolean selector)."""
    for c0 in range(0, max(width, 1), tile):
        c1 = min(width, c0 + tile)
        sel = (cols >= c0) & (cols < c1) if c1 < width else cols >= c0
        if np.any(sel):
            yield c0, c1, sel


def blocks(shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> Iterator[tuple[slice, slice, slice]]:
    """Output blocks of ``chunks`` covering ``shape`` (last ones may be smaller)."""
    for z in range(0, shape[0], chunks[0]):
        for y in range(0, shape[1], chunks[1]):
            for x in range(0, shape[2], chunks[2]):
                yield (
                    slice(z, min(z + chunks[0], shape[0])),
                    slice(y, min(y + chunks[1], shape[1])),
                    slice(x, min(x + chunks[2], shape[2])),
                )


class NormalisedView:
    """A ZYX array read through a normalisation: slicing returns float32 in [0, 1]."""

    def __init__(self, data: Any, norm: Normalisation) -> None:
        self.data = data
        self.norm = norm
        self.shape = tuple(int(s) for s in data.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        raw = self.data[index]
        raw = raw.compute() if hasattr(raw, "compute") else raw
        return self.norm.apply(np.asarray(raw))


class BlockReconstruction:
    """The isotropic volume, block by block, in the input's intensity scale: the one block source
    behind reconstruct_volume, `niiv reconstruct` and saving the lazy layer.

    Picklable, so a dask.distributed cluster can run it: ``source`` is a path (each process opens
    it lazily itself, so workers read only the chunks they need) or an array, and the model travels
    as its weights. Indices are in the output ``region`` (default the whole output volume).
    """

    def __init__(
        self,
        source: Any,
        normalisation: Normalisation,
        model: NiivModel,
        alpha: float,
        shape_out: tuple[int, int, int],
        orientation: Orientation = "xz",
        dtype: Any = np.float32,
        device: str = "auto",
        region: tuple[slice, slice, slice] | None = None,
        precision: str = "auto",
        compiled: bool = False,
    ) -> None:
        self.source = str(source) if isinstance(source, Path) else source
        self.precision = precision
        self.compiled = compiled
        self.norm = normalisation
        self.model = model.cpu()
        self.alpha = alpha
        self.shape_out = shape_out
        self.orientation = orientation
        self.dtype = np.dtype(dtype)
        self.device = str(device)
        self.origin = tuple(r.start for r in region) if region else (0, 0, 0)
        self._state: tuple[Reconstructor, NormalisedView] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_state", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _state=None, _lock=threading.Lock())

    def _ready(self) -> tuple[Reconstructor, NormalisedView]:
        with self._lock:  # threads of one process share one model and one open volume
            if self._state is None:
                from .devices import pick_device

                data = open_volume(self.source).data if isinstance(self.source, str) else self.source
                self._state = (
                    Reconstructor(
                        self.model,
                        self.alpha,
                        pick_device(self.device),
                        precision=self.precision,
                        compiled=self.compiled,
                    ),
                    NormalisedView(data, self.norm),
                )
            return self._state

    def __call__(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        import dask

        rec, view = self._ready()
        where = tuple(slice(o + i.start, o + i.stop) for o, i in zip(self.origin, index, strict=True))
        with dask.config.set(scheduler="synchronous"):  # reading inside a task: no nested scheduler
            block = rec.block(view, self.shape_out, where, self.orientation)  # type: ignore[arg-type]
        return self.norm.invert(block, self.dtype)


def output_region(
    in_shape: tuple[int, int, int], out_shape: tuple[int, int, int], region: tuple[slice, ...] | None
) -> tuple[slice, slice, slice]:
    """Output indices whose voxels lie in the input ``region`` (slices in input voxels)."""
    if region is None:
        return (slice(0, out_shape[0]), slice(0, out_shape[1]), slice(0, out_shape[2]))
    if len(region) != 3:
        raise NiivInputError(f"a region needs three ranges z, y, x; got {len(region)}")
    out = []
    for r, n_in, n_out in zip(region, in_shape, out_shape, strict=True):
        start, stop, _ = r.indices(n_in)
        lo = int(np.floor(start * n_out / n_in + 1e-9))
        hi = int(np.ceil(stop * n_out / n_in - 1e-9))
        if hi <= lo:
            raise NiivInputError(f"the region {start}:{stop} is empty along an axis of {n_in} voxels")
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]


def extent(region: tuple[slice, slice, slice]) -> tuple[int, int, int]:
    return tuple(r.stop - r.start for r in region)  # type: ignore[return-value]


def reconstruct_volume(
    model: NiivModel,
    source: Any,
    alpha: float | None = None,
    scale: float = 1.0,
    orientation: Orientation = "xz",
    device: str | torch.device = "cpu",
    chunks: tuple[int, int, int] | None = None,
    normalisation: Normalisation | None = None,
    out_dtype: Any = None,
    region: tuple[slice, ...] | None = None,
    precision: str = "auto",
    compiled: bool = False,
) -> np.ndarray:
    """Reconstruct a volume, or the part of it inside ``region`` (input voxels), in memory; the
    result is in the input's intensity scale.

    ``alpha`` defaults to the volume's voxel-size ratio. A region reads its halo from the whole
    volume, so it equals the same part of a whole-volume reconstruction. Large volumes go to
    OME-Zarr block by block (`niiv reconstruct`).
    """
    vol = as_volume(source)
    alpha = check_alpha(alpha if alpha is not None else vol.alpha)
    check_reconstructable(vol.shape, model, orientation)
    check_scale(scale)
    norm = normalisation or fit_normalisation(vol.data)
    shape_out = output_shape(vol.shape, alpha, scale)
    target = output_region(vol.shape, shape_out, region)
    dtype = np.dtype(out_dtype or np.float32)
    source = BlockReconstruction(
        vol.data, norm, model, alpha, shape_out, orientation, dtype, str(device), target, precision, compiled
    )
    return assemble(source, extent(target), dtype, chunks)


def assemble(
    source: BlockReconstruction, size: tuple[int, int, int], dtype: Any, chunks: tuple[int, int, int] | None = None
) -> np.ndarray:
    """A whole (small) output in memory, computed block by block."""
    out = np.empty(size, dtype=dtype)
    for index in blocks(size, chunks or (size[0], 64, size[2])):
        out[index] = source(index)
    return out


def check_scale(scale: float) -> None:
    if not 0.1 <= scale <= 10:
        raise NiivInputError(f"output scale {scale} is out of range; use 0.5 (finer) to 2 (coarser) times isotropic")


def check_reconstructable(shape: tuple[int, ...], model: NiivModel, orientation: str = "both") -> None:
    """A volume needs at least a few z planes and, across the slices it is decoded in, enough
    pixels for one encoder footprint (x for xz slices, y for yz slices)."""
    z, y, x = shape
    if z < 2:
        raise NiivInputError(f"the volume has {z} z plane(s); at least 2 are needed to reconstruct between them")
    need = model.config.receptive_radius + 1
    across = {"xz": x, "yz": y}.get(orientation, min(y, x))
    if across < need:
        raise NiivInputError(
            f"the volume's xy size {y}x{x} is smaller than the model's receptive field "
            f"({2 * need - 1} px, at least {need} needed); use a larger crop"
        )


def volume_geometry(vol: Volume, alpha: float, scale: float) -> dict[str, Any]:
    """Output shape and voxel size for writing: z voxel shrinks by alpha / scale, xy grow by scale."""
    shape = output_shape(vol.shape, alpha, scale)
    vz, vy, vx = vol.voxel_size
    voxel = (vz * vol.shape[0] / shape[0], vy * vol.shape[1] / shape[1], vx * vol.shape[2] / shape[2])
    return {"shape": shape, "voxel_size": voxel}
