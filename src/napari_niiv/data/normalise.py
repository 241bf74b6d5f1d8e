"""Map raw intensities (uint8, uint16, float) to [0, 1] robustly and back."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import dask.array as da
import numpy as np

from ..errors import NiivInputError

# Voxels read to estimate percentiles: enough for stable 0.1 % tails, small enough to be instant
# on a lazily opened terabyte volume.
_SAMPLE_VOXELS = 2_000_000
_SAMPLE_CHUNKS = 32
# The resume fingerprint strides through the whole volume up to this many chunks (it reads them all)
_DIGEST_STRIDE_CHUNKS = 4096
# The normalisation strides through the whole volume (it reads it all) up to this size and count of
# chunks, so that one volume gets one normalisation however it is chunked: as a numpy array, the
# reader's dask array or a zarr store. Beyond, it is sampled in whole chunks (32 of them, which may
# add up to as much): the cost stays flat, and a store opened the same way (the CLI, the viewer's
# layer) gets the same sample. At 512 MiB the stride read a whole store (7776 requests of a
# remote one) for a small `--region`.
_STRIDE_BYTES = 64 * 2**20
_STRIDE_CHUNKS = 65536


@dataclass(frozen=True)
class Normalisation:
    """Linear map ``(x - low) / (high - low)`` clipped to [0, 1], and its inverse.

    Upstream divides by 255, which fits only uint8. Percentiles fit any dtype and ignore hot
    pixels; the method and the training data's values are stored beside the weights.
    """

    low: float
    high: float
    method: str = "percentile"
    percentiles: tuple[float, float] = (0.01, 99.99)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``x`` in [0, 1]; NaN and inf become NaN, which every check of the model's input refuses
        (clipped, an inf would pass as the brightest voxel)."""
        raw = np.asarray(x)
        x = raw.astype(np.float32, copy=False)
        scale = 1.0 / max(self.high - self.low, 1e-12)
        out = np.clip((x - self.low) * scale, 0.0, 1.0)
        if raw.dtype.kind not in "biu":  # integers are finite: no extra pass over every read block
            bad = ~np.isfinite(x)
            if bad.any():
                out[bad] = np.nan
        return out

    def invert(self, y: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
        out = np.asarray(y, dtype=np.float32) * (self.high - self.low) + self.low
        dtype = np.dtype(dtype)
        if dtype.kind in "ui":
            info = np.iinfo(dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        return out.astype(dtype)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalisation:
        return cls(
            float(d["low"]), float(d["high"]), d.get("method", "percentile"), tuple(d.get("percentiles", (0.01, 99.99)))
        )


def _spread_blocks(arr: da.Array, count: int) -> list[da.Array]:
    """Up to ``count`` whole chunks spread evenly over the array (all of them when it has fewer).
    Sliced by the chunk boundaries: ``arr.blocks`` would list every chunk's key first (memory and
    time in proportion to the chunks: a 1 TB store of 32^3 chunks ran out of memory)."""
    n_blocks = int(np.prod(arr.numblocks))
    picks = np.unique(np.linspace(0, n_blocks - 1, min(count, n_blocks)).round().astype(int))
    starts = [np.concatenate(([0], np.cumsum(c))) for c in arr.chunks]
    out = []
    for i in picks:
        index = np.unravel_index(int(i), arr.numblocks)
        out.append(arr[tuple(slice(int(s[k]), int(s[k + 1])) for s, k in zip(starts, index, strict=True))])
    return out


def content_digest(data: Any, chunks: int = _SAMPLE_CHUNKS) -> str:
    """sha256 of the shape, dtype and the bytes of ``chunks`` whole chunks spread over the volume,
    plus a strided sample of all of it (of a store of more than ``_DIGEST_STRIDE_CHUNKS`` chunks,
    the normalisation's sample inside spread chunks: a stride would read them all): a resumed job
    compares it to refuse an input whose content changed (reordered planes, an edited region) even
    where sizes and dates did not."""
    import hashlib

    arr = data if isinstance(data, da.Array) else da.asarray(data)
    h = hashlib.sha256(f"{arr.shape}:{arr.dtype}".encode())
    # one compute for all (each compute of a store of millions of chunks costs a graph pass)
    for block in da.compute(*_spread_blocks(arr, chunks)):
        h.update(np.ascontiguousarray(block).tobytes())
    if int(np.prod(arr.numblocks)) <= _DIGEST_STRIDE_CHUNKS:
        step = max(1, int(np.ceil((arr.size / _SAMPLE_VOXELS) ** (1.0 / arr.ndim))))
        h.update(np.ascontiguousarray(arr[(slice(None, None, step),) * arr.ndim].compute()).tobytes())
    else:  # a stride would read every chunk of a large store (all of a terabyte): its spread sample instead
        h.update(np.ascontiguousarray(_sample(arr)).tobytes())
    return h.hexdigest()


def _sample(arr: da.Array, stride_bytes: int = 0) -> np.ndarray:
    """About ``_SAMPLE_VOXELS`` voxels spread over the volume. A stride through a chunked store
    touches every chunk, so a volume of many chunks is sampled in ``_SAMPLE_CHUNKS`` whole chunks
    spread evenly over it instead (the cost stays flat as the volume grows), unless it is at most
    ``stride_bytes`` (and ``_STRIDE_CHUNKS`` chunks): then by a stride, which the chunks do not change."""
    n_blocks = int(np.prod(arr.numblocks))
    if n_blocks > _SAMPLE_CHUNKS and not _strided(arr, stride_bytes):
        blocks = _spread_blocks(arr, _SAMPLE_CHUNKS)
        per = max(1, _SAMPLE_VOXELS // len(blocks))
        parts = []
        for b in blocks:
            step = max(1, int(np.ceil((b.size / per) ** (1.0 / b.ndim))))
            parts.append(b[(slice(None, None, step),) * b.ndim].ravel())
        return np.asarray(da.concatenate(parts).compute(), dtype=np.float64)
    step = max(1, int(np.ceil((arr.size / _SAMPLE_VOXELS) ** (1.0 / arr.ndim))))
    return np.asarray(arr[(slice(None, None, step),) * arr.ndim].compute(), dtype=np.float64).ravel()


def _strided(arr: da.Array, stride_bytes: int) -> bool:
    """Whether ``_sample`` samples ``arr`` by a stride through all of it (small enough)."""
    return arr.nbytes <= stride_bytes and int(np.prod(arr.numblocks)) <= _STRIDE_CHUNKS


def display_range(data: Any, percentiles: tuple[float, float] = (0.01, 99.99)) -> tuple[float, float] | None:
    """Contrast limits for showing ``data``: the normalisation's percentiles of its finite sampled
    values (a NaN background must not make every float volume [0, 1]); None when they are constant."""
    sample = _sample(data if isinstance(data, da.Array) else da.asarray(data))
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    low, high = (float(v) for v in np.percentile(sample, percentiles))
    return (low, high) if high > low else None


# Inputs are normalised in float32; values near its largest (3.4e38) overflow on the way
_FLOAT32_SAFE = float(np.finfo(np.float32).max) / 16


def fit_normalisation(
    data: Any,
    percentiles: tuple[float, float] = (0.01, 99.99),
    in_memory: np.ndarray | None = None,
    what: str = "the volume",
) -> Normalisation:
    """Percentile normalisation from a sample spread over the whole volume (never loads it all).

    Every tile of a volume must share one normalisation or tiles would not stitch, so this is
    computed once per volume, not per tile. Up to ``_STRIDE_BYTES`` it does not depend on how the
    volume is chunked: then ``in_memory``, the same voxels already read, is sampled instead of
    reading ``data`` again. ``what`` names the volume in a refusal (training names which of several).
    """
    arr = data if isinstance(data, da.Array) else da.asarray(data)
    if in_memory is not None and in_memory.shape == arr.shape and _strided(arr, _STRIDE_BYTES):
        arr = da.asarray(in_memory)
    sample = _sample(arr, _STRIDE_BYTES)
    if not np.all(np.isfinite(sample)):
        raise NiivInputError(
            f"{what} contains NaN or infinite values; replace them (e.g. with 0 or the "
            "background level) before reconstruction or training"
        )
    largest = float(np.abs(sample).max()) if sample.size else 0.0
    if largest > _FLOAT32_SAFE:
        raise NiivInputError(
            f"{what} holds values up to {largest:.3g}, beyond float32 (about 3.4e38), in which niiv "
            "computes; rescale the volume (divide it by a constant) first"
        )
    low, high = (float(v) for v in np.percentile(sample, percentiles))
    if high <= low:
        if np.dtype(arr.dtype).kind in "ui":
            low, high = float(sample.min()), float(sample.max())
        if high <= low:
            raise NiivInputError(f"{what} is constant; there is nothing to reconstruct")
    return Normalisation(low, high, "percentile", tuple(percentiles))  # type: ignore[arg-type]
