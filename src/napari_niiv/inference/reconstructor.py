"""The one place that turns a niiv model into pixels: slices, blocks with halos, whole volumes.

Where output voxels are, and which input pixels they read, is :mod:`.geometry`'s: output index k
along an axis sits at the continuous input coordinate ``(k + 0.5) * n_in / n_out``, so every
output voxel is a function of its global index alone, which is why blocks of any size, cut with
enough halo, reproduce the untiled volume.

An xz reconstruction decodes, for each output y, the xz plane at that y (linearly interpolated
between acquired planes when it falls between them); yz likewise along x; ``both`` averages them.
The confidence map (:mod:`.confidence`) is the disagreement of the two, from the same decoding.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..data.io import as_volume, open_volume
from ..data.normalise import Normalisation, fit_normalisation
from ..errors import NiivInputError
from ..model import NiivModel
from . import confidence
from .engine import InferenceEngine
from .geometry import OutputGeometry, chunk_indices, output_coords, output_geometry, pixel_range
from .settings import InferenceSettings
from .worker import Cancelled, Progress


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


class Reconstructor:
    """A model run with one :class:`InferenceSettings`, ready to decode normalised slices and blocks.

    ``slice_batch`` bounds how many planes are encoded together (memory), ``tile`` how many input
    columns a block is cut into before its halos are added (each cut encodes the halo twice; the
    engine tiles wide slices itself, without repeating work).
    """

    def __init__(self, model: NiivModel, settings: InferenceSettings, slice_batch: int = 16, tile: int = 1024) -> None:
        self.settings = settings
        self.engine = InferenceEngine(model, settings)
        self.slice_batch = int(slice_batch)
        self.tile = int(tile)

    @property
    def alpha(self) -> float:
        return self.settings.alpha

    @property
    def model(self) -> NiivModel:
        """The engine's own copy of the model."""
        return self.engine.model

    @property
    def halo(self) -> int:
        """Input pixels of context a tile needs: the encoder's receptive radius, plus the attention
        neighbourhood (one output voxel) and the bilinear footprint (one pixel)."""
        return self.model.config.receptive_radius + 2

    def planes(
        self,
        low: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        cancelled: Cancelled | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray | None:
        """Decode planes ``low`` (P, h, w) (normalised) at output coordinates ``rows`` x ``cols``;
        None if ``cancelled()`` turned true (asked between batches of planes and, inside the
        engine, between layers and chunks of points: a batch of a save's block is seconds).
        ``progress`` gets the fraction of the planes decoded after each batch.

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
        stopped = cancelled or (lambda: False)
        for p0 in range(0, low.shape[0], self.slice_batch):
            if stopped():
                return None
            for c0, c1, sel in _column_tiles(cols, low.shape[2], self.tile):
                lo, hi = pixel_range(cols[sel], low.shape[2], self.halo)
                lo, hi = min(lo, c0), max(hi, c1)
                x = torch.from_numpy(np.ascontiguousarray(low[p0 : p0 + self.slice_batch, :, lo:hi])).unsqueeze(1)
                grid = self.engine.encode_until(x, self.alpha, stopped)
                c = torch.as_tensor(cols[sel] - lo, dtype=torch.float32)
                decoded = None if grid is None else self.engine.render_until(grid, r, c, stopped)
                if decoded is None:
                    return None
                out[p0 : p0 + self.slice_batch, :, sel] = decoded.cpu().numpy()
            if progress is not None:
                progress(min(p0 + self.slice_batch, low.shape[0]) / low.shape[0])
        return out

    def block(
        self,
        source: Any,
        shape_out: tuple[int, int, int],
        index: tuple[slice, slice, slice],
        cancelled: Cancelled | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray | None:
        """Normalised output block ``index`` of the isotropic volume; ``source`` is the normalised
        input (anything sliceable ZYX), read only around the block (halo included). None if
        ``cancelled()`` turned true on the way; ``progress``: as :meth:`block_parts`."""
        orients = self.settings.orientations("xz")
        parts = self.block_parts(source, shape_out, index, orients, cancelled, progress)
        return None if parts is None else confidence.reconstruction(parts, orients)

    def block_confidence(
        self,
        source: Any,
        shape_out: tuple[int, int, int],
        index: tuple[slice, slice, slice],
        cancelled: Cancelled | None = None,
        progress: Progress | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`block` and the confidence map of the same voxels (:mod:`.confidence`), both
        normalised, from one read and one decoding of each orientation; None if cancelled."""
        orients = confidence.orientations(self.settings, "xz", confidence=True)
        parts = self.block_parts(source, shape_out, index, orients, cancelled, progress)
        if parts is None:
            return None
        return confidence.reconstruction(parts, self.settings.orientations("xz")), confidence.disagreement(parts)

    def block_parts(
        self,
        source: Any,
        shape_out: tuple[int, int, int],
        index: tuple[slice, slice, slice],
        orients: tuple[str, ...],
        cancelled: Cancelled | None = None,
        progress: Progress | None = None,
    ) -> dict[str, np.ndarray] | None:
        """The normalised block ``index`` decoded from each of ``orients`` ('xz', 'yz'); None if
        ``cancelled()`` turned true on the way. ``progress`` gets the fraction of the block's
        decoding done (all orientations) as it goes: a block can take minutes on a CPU."""
        n_in = tuple(int(s) for s in source.shape)
        coords = [output_coords(n_in[a], shape_out[a], index[a].start, index[a].stop) for a in range(3)]
        return self.parts_at(source, coords, orients, cancelled, progress)

    def parts_at(
        self,
        source: Any,
        coords: list[np.ndarray],
        orients: tuple[str, ...],
        cancelled: Cancelled | None = None,
        progress: Progress | None = None,
    ) -> dict[str, np.ndarray] | None:
        """:meth:`block_parts` at any continuous input coordinates ``coords`` (one array per axis,
        z, y, x; e.g. :func:`.geometry.section_coords` for a simulated degradation)."""
        n_in = tuple(int(s) for s in source.shape)
        ranges = [pixel_range(coords[a], n_in[a], self.halo) for a in range(3)]
        data = np.asarray(source[tuple(slice(lo, hi) for lo, hi in ranges)], dtype=np.float32)
        rows = coords[0] - ranges[0][0]
        parts = {}
        for k, orient in enumerate(orients):
            # xz: planes are y positions, columns are x; yz: planes are x positions, columns are y.
            plane_axis, col_axis = (1, 2) if orient == "xz" else (2, 1)
            planes = interpolate_planes(data, coords[plane_axis], plane_axis, ranges[plane_axis][0])
            planes = np.moveaxis(planes, plane_axis, 0)  # (P, z, cols)
            step = None if progress is None else (lambda f, k=k: progress((k + f) / len(orients)))
            dec = self.planes(planes, rows, coords[col_axis] - ranges[col_axis][0], cancelled, step)
            if dec is None:
                return None
            parts[orient] = np.moveaxis(dec, 0, plane_axis)
        return parts


def _column_tiles(cols: np.ndarray, width: int, tile: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Split output columns into groups whose coordinates fall in consecutive ``tile``-wide input
    column ranges; yields (first, last input column, boolean selector)."""
    for c0 in range(0, max(width, 1), tile):
        c1 = min(width, c0 + tile)
        sel = (cols >= c0) & (cols < c1) if c1 < width else cols >= c0
        if np.any(sel):
            yield c0, c1, sel


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

    Picklable, so a dask.distributed cluster can run it: ``source`` is a path or URL (each process
    opens it lazily itself, so workers read only the chunks they need) or an array, and the model
    travels as its architecture and CPU tensors (the model lent is not touched). Indices are in
    the output region of ``geometry``. With ``confidence`` its blocks are the confidence map
    (:mod:`.confidence`, float32 in the input's intensity units) instead of the reconstruction.
    """

    def __init__(
        self,
        source: Any,
        normalisation: Normalisation,
        model: NiivModel,
        settings: InferenceSettings,
        geometry: OutputGeometry,
        dtype: Any = np.float32,
        confidence: bool = False,
        origin: str | None = None,
    ) -> None:
        self.source = str(source) if hasattr(source, "__fspath__") else source
        # the file an array ``source`` was read from (a napari layer's): a resume checks its size and date too
        self.origin = origin
        self.confidence = bool(confidence)
        self.norm = normalisation
        self.config = model.config
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.settings = settings
        self.geometry = geometry
        self.dtype = np.dtype(np.float32 if self.confidence else dtype)
        self._state: tuple[Reconstructor, NormalisedView] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_state", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _state=None, _lock=threading.Lock())

    def _ready(self) -> tuple[Reconstructor, NormalisedView]:
        with self._lock:  # threads of one process share one model and one open volume
            if self._state is None:
                model = NiivModel(self.config)
                model.load_state_dict(self.state)
                data = open_volume(self.source).data if isinstance(self.source, str) else self.source
                self._state = (Reconstructor(model, self.settings), NormalisedView(data, self.norm))
            return self._state

    stacks_z = True  # blocks read input rows of context: the writer computes a column's chunks at once

    def __call__(
        self, index: tuple[slice, slice, slice], cancelled: Cancelled | None = None, progress: Progress | None = None
    ) -> np.ndarray | None:
        """The block at ``index``, in the input's intensity scale (or the confidence map); None if
        ``cancelled()`` turned true on the way; ``progress``: the fraction of it decoded."""
        import dask

        rec, view = self._ready()
        where = tuple(slice(o + i.start, o + i.stop) for o, i in zip(self.geometry.origin, index, strict=True))
        with dask.config.set(scheduler="synchronous"):  # reading inside a task: no nested scheduler
            if self.confidence:
                both = rec.block_confidence(view, self.geometry.shape, where, cancelled, progress)
                return None if both is None else confidence.to_intensity(both[1], self.norm)
            block = rec.block(view, self.geometry.shape, where, cancelled, progress)
        return None if block is None else self.norm.invert(block, self.dtype)

    def confidence_map(self) -> BlockReconstruction:
        """The same job writing the confidence map (what `niiv reconstruct --confidence` writes)."""
        job = copy.copy(self)  # the same source, normalisation, weights, settings and geometry
        job.__dict__.update(confidence=True, dtype=np.dtype(np.float32), _state=None, _lock=threading.Lock())
        return job


def reconstruct_volume(
    model: NiivModel,
    source: Any,
    settings: InferenceSettings | None = None,
    *,
    region: tuple[slice, ...] | None = None,
    normalisation: Normalisation | None = None,
    out_dtype: Any = None,
    chunks: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Reconstruct a volume, or the part of it inside ``region`` (input voxels), in memory; the
    result is in the input's intensity scale.

    ``settings`` default to the volume's voxel-size ratio as alpha. A region reads its halo from
    the whole volume, so it equals the same part of a whole-volume reconstruction. Large volumes
    go to OME-Zarr block by block (`niiv reconstruct`).
    """
    model = getattr(model, "model", model)  # load_weights(...) itself is welcome too
    if not isinstance(model, NiivModel):
        raise NiivInputError(
            f"model: a {type(model).__name__} is not a niiv model; give load_weights(resolve_weights(NAME)).model"
        )
    if settings is not None and not isinstance(settings, InferenceSettings):
        raise NiivInputError(
            f"settings: a {type(settings).__name__} is not InferenceSettings; give InferenceSettings(alpha=...)"
        )
    if chunks is not None and (len(chunks) != 3 or any(int(c) < 1 for c in chunks)):
        raise NiivInputError(f"chunks {chunks!r}: give three positive sizes (z, y, x)")
    vol = as_volume(source)
    if settings is None:
        if not vol.has_voxel_size:
            raise NiivInputError(
                "this volume gives no voxel sizes, so its anisotropy is unknown: pass "
                "InferenceSettings(alpha=...) (z voxel size / xy voxel size), as `niiv reconstruct --alpha` asks"
            )
        settings = InferenceSettings(alpha=vol.alpha)
    check_reconstructable(vol.shape, model, settings.volume_orientation)
    norm = normalisation or fit_normalisation(vol.data)
    geometry = output_geometry(vol.shape, settings.alpha, settings.scale, region=region)
    dtype = np.dtype(out_dtype or np.float32)
    return assemble(BlockReconstruction(vol.data, norm, model, settings, geometry, dtype), chunks)


def assemble(source: BlockReconstruction, chunks: tuple[int, int, int] | None = None) -> np.ndarray:
    """A whole (small) output in memory, computed block by block."""
    size = source.geometry.size
    out = np.empty(size, dtype=source.dtype)
    for index in chunk_indices(size, chunks or (size[0], 64, size[2])):
        out[index] = source(index)
    return out


def slice_width(shape: tuple[int, ...], model: NiivModel, orientation: str = "both") -> tuple[int, int]:
    """Pixels across the slices ``orientation`` decodes (x for xz, y for yz, the fewer for both) in
    a volume of ``shape``, and the fewest ``model``'s receptive field needs."""
    _, y, x = shape
    return {"xz": x, "yz": y}.get(orientation, min(y, x)), model.config.receptive_radius + 1


def check_reconstructable(shape: tuple[int, ...], model: NiivModel, orientation: str = "both") -> None:
    """A volume needs at least a few z planes and, across the slices it is decoded in, enough
    pixels for one encoder footprint (x for xz slices, y for yz slices)."""
    z, y, x = shape
    if z < 2:
        raise NiivInputError(f"the volume has {z} z plane(s); at least 2 are needed to reconstruct between them")
    across, need = slice_width(shape, model, orientation)
    if across < need:
        raise NiivInputError(
            f"the volume's xy size {y}x{x} is smaller than the model's receptive field "
            f"({2 * need - 1} px, at least {need} needed): give a larger volume or region, or use weights with a "
            "smaller receptive field (niiv-fast's is the smallest)"
        )
