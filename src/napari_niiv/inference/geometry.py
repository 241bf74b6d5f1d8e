"""Where every output voxel is: one pure function for the CLI, the lazy layer, its save, the live
layer and the writer, so that they all land on the same world positions.

Conventions (napari's, and NGFF's as napari-ome-zarr reads it):

- Axes are ZYX; z is the anisotropic axis.
- **Pixel centres.** Data index ``i`` sits at world ``i * voxel + translation``; a voxel of size
  ``s`` at index 0 covers ``[translation - s/2, translation + s/2]``.
- **The output tiles the input's extent.** Along an axis of ``n_in`` input voxels of size ``s_in``
  the output has ``n_out`` voxels of size ``v = s_in * n_in / n_out`` covering the same world
  interval, so its first voxel centre is at ``translation_in - s_in/2 + v/2`` (alpha 10, 40 nm
  sections, 4 nm output: 18 nm before the first section's centre).
- **Continuous input coordinates** (what the model reads): input pixel ``i`` covers ``[i, i + 1)``;
  output index ``k`` sits at ``u = (k + 0.5) * n_in / n_out``.
- **Simulated sections** (training and evaluation): an isotropic stack degraded by ``alpha`` along
  z gives sections ``i`` covering planes ``[i * alpha, (i + 1) * alpha)``; its plane ``k`` (centre
  ``k + 0.5``) sits at section coordinate ``u = (k + 0.5) / alpha``, and only the planes the sections
  fully cover (``k + 1 <= n_sections * alpha``) are ground truth. At a fractional alpha
  ``n_sections * alpha`` need not be whole, so these are not ``output_coords``' points.
- **Unknown voxel sizes.** A file without voxel sizes whose anisotropy is given by hand (alpha A)
  is taken to have voxels ``(A, 1, 1)``: the output voxel is then isotropic, ``scale`` in every
  axis (1, 1, 1 at scale 1), never ``(1/A, 1, 1)``.
- **Pyramids.** Level ``L`` averages ``2**L`` level-0 voxels per axis (shapes halve, rounding up),
  so its voxel is ``2**L * v`` and its first centre ``(2**L - 1) / 2`` level-0 voxels in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data.io import check_voxel_size
from ..errors import NiivInputError

Triple = tuple[float, float, float]
Index = tuple[slice, slice, slice]
PYRAMID_TOP = 256  # pyramid levels are added until the largest side is at most this


def output_shape(shape: Sequence[int], alpha: float, scale: float = 1.0) -> tuple[int, int, int]:
    """Shape of the isotropic output: z gains ``alpha / scale``, y and x ``1 / scale``."""
    z, y, x = (int(s) for s in shape)
    return (max(1, round(z * alpha / scale)), max(1, round(y / scale)), max(1, round(x / scale)))


def output_coords(n_in: int, n_out: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Continuous input coordinates of output indices ``start..stop`` along one axis."""
    stop = n_out if stop is None else stop
    return (np.arange(start, stop, dtype=np.float64) + 0.5) * (n_in / n_out)


def covered_planes(n_sections: int, alpha: float) -> int:
    """How many planes of an isotropic stack ``n_sections`` simulated sections, ``alpha`` planes
    apart, fully cover (the ground truth of a simulated degradation)."""
    return int(np.floor(n_sections * alpha + 1e-9))


def section_coords(depth: int, alpha: float) -> np.ndarray:
    """Continuous section coordinates of the first ``depth`` planes of an isotropic stack degraded
    by ``alpha`` along z: ``(k + 0.5) / alpha`` (see the module notes)."""
    return (np.arange(depth, dtype=np.float64) + 0.5) / float(alpha)


def drawn_level_coords(n_in: int, n_out: int, n_level: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Continuous input coordinates of voxels ``start..stop`` of a pyramid level of ``n_level``
    voxels (level 0: ``n_out``) where napari draws them: a multiscale layer places level voxel ``k``
    at level-0 index ``k * n_out / n_level`` (its downsample factor; a level's own offset is not
    napari's to know), in 2D zoomed out and in 3D. The lazy layer renders there, so that every level
    lies over its input; a written level averages its voxels instead (its translation: :meth:`OutputGeometry.level`)."""
    stop = n_level if stop is None else stop
    return (np.arange(start, stop, dtype=np.float64) * (n_out / n_level) + 0.5) * (n_in / n_out)


def pixel_range(coords: np.ndarray, n_in: int, halo: int) -> tuple[int, int]:
    """Input pixels ``[lo, hi)`` that output coordinates ``coords`` need, with ``halo`` context."""
    lo = int(np.floor(coords.min())) - halo
    hi = int(np.ceil(coords.max())) + halo
    return max(0, lo), min(n_in, hi)


def effective_voxel_size(voxel_size: Sequence[float] | None, alpha: float) -> Triple:
    """The input voxel to place the output with: the file's, or ``(alpha, 1, 1)`` when unknown."""
    if voxel_size is None:
        return (float(alpha), 1.0, 1.0)
    v = tuple(float(s) for s in voxel_size)
    check_voxel_size(v)
    return v  # type: ignore[return-value]


@dataclass(frozen=True)
class OutputGeometry:
    """The isotropic output, or the part of it a ``region`` asks for, placed in the world.

    ``shape`` is the whole output; ``region`` the output indices written (the whole by default);
    ``voxel_size`` and ``translation`` place index 0 of the *region* (napari's ``scale`` and
    ``translate``, NGFF's scale and translation).
    """

    shape: tuple[int, int, int]
    region: Index
    voxel_size: Triple
    translation: Triple
    unit: str | None = None

    @property
    def size(self) -> tuple[int, int, int]:
        """Shape of what is written: the region's extent."""
        return tuple(r.stop - r.start for r in self.region)  # type: ignore[return-value]

    @property
    def origin(self) -> tuple[int, int, int]:
        return tuple(r.start for r in self.region)  # type: ignore[return-value]

    def level(self, level: int) -> tuple[Triple, Triple]:
        """(voxel size, translation) of pyramid level ``level`` of the written array."""
        f = 2**level
        voxel = tuple(v * f for v in self.voxel_size)
        shift = tuple(t + v * (f - 1) / 2.0 for t, v in zip(self.translation, self.voxel_size, strict=True))
        return voxel, shift  # type: ignore[return-value]

    def world(self, index: Sequence[float]) -> Triple:
        """World position of the region's voxel at ``index`` (z, y, x)."""
        return tuple(t + i * v for t, i, v in zip(self.translation, index, self.voxel_size, strict=True))  # type: ignore[return-value]


def output_geometry(
    shape: Sequence[int],
    alpha: float,
    scale: float = 1.0,
    voxel_size: Sequence[float] | None = None,
    translation: Sequence[float] | None = None,
    unit: str | None = None,
    region: Sequence[slice] | None = None,
) -> OutputGeometry:
    """Shape, voxel size and translation of the isotropic output of an input of ``shape`` (ZYX)
    with ``voxel_size`` (None: unknown, see the module notes) and ``translation`` (world position
    of input voxel 0's centre), reconstructed at ``alpha`` and output ``scale``; ``region`` is in
    *input* voxels (the output voxels whose centres lie inside it are kept)."""
    shape_in = tuple(int(s) for s in shape)
    s_in = effective_voxel_size(voxel_size, alpha)
    t_in = tuple(float(t) for t in (translation if translation is not None else (0.0, 0.0, 0.0)))
    if len(t_in) != 3 or not all(math.isfinite(t) for t in t_in):
        raise NiivInputError(f"translation {t_in} is not usable: give three finite numbers z, y, x")
    shape_out = output_shape(shape_in, alpha, scale)
    voxel = tuple(s * n_in / n_out for s, n_in, n_out in zip(s_in, shape_in, shape_out, strict=True))
    target = output_region(shape_in, shape_out, region)
    first = tuple(t - s / 2.0 + v / 2.0 + r.start * v for t, s, v, r in zip(t_in, s_in, voxel, target, strict=True))
    return OutputGeometry(shape_out, target, voxel, first, unit)  # type: ignore[arg-type]


def check_region(region: Sequence[slice], shape: Sequence[int]) -> Index:
    """A region of a volume of ``shape`` as three step-1 slices with explicit bounds inside it;
    anything outside the volume or empty is refused (never silently clipped)."""
    if len(region) != 3:
        raise NiivInputError(f"a region needs three ranges z, y, x; got {len(region)}")
    out = []
    for name, r, n in zip("zyx", region, shape, strict=True):
        if r.step not in (None, 1):
            raise NiivInputError(f"the region's {name} range has a step ({r.step}); give start:stop only")
        start = 0 if r.start is None else int(r.start)
        stop = int(n) if r.stop is None else int(r.stop)
        if not 0 <= start < stop <= n:
            raise NiivInputError(
                f"the region's {name} range {start}:{stop} is not inside the volume's {n} voxels along {name} "
                f"(0:{n}); give a range within it"
            )
        out.append(slice(start, stop))
    return tuple(out)  # type: ignore[return-value]


def output_region(in_shape: Sequence[int], out_shape: Sequence[int], region: Sequence[slice] | None) -> Index:
    """Output indices whose voxel centres lie in the input ``region`` (slices in input voxels)."""
    if region is None:
        return tuple(slice(0, int(n)) for n in out_shape)  # type: ignore[return-value]
    out = []
    for r, n_in, n_out in zip(check_region(region, in_shape), in_shape, out_shape, strict=True):
        # voxel j is centred at input (j + 0.5) * n_in / n_out: inside [start, stop) from
        # ceil(start * n_out / n_in - 0.5) up to (not including) the same at stop, so regions that
        # meet give outputs that meet, never sharing a voxel at a fractional ratio
        lo, hi = (int(np.ceil(v * n_out / n_in - 0.5 - 1e-9)) for v in (r.start, r.stop))
        lo = min(lo, n_out - 1)
        out.append(slice(lo, max(hi, lo + 1)))
    return tuple(out)  # type: ignore[return-value]


def pyramid_shapes(shape: Sequence[int], levels: int | None = None) -> list[tuple[int, int, int]]:
    """Level shapes, each half the previous (rounded up) along every axis: the output is isotropic.
    ``levels`` fixes how many; by default they halve until the largest side is at most
    ``PYRAMID_TOP``."""
    shapes = [tuple(int(s) for s in shape)]
    while (len(shapes) < levels) if levels is not None else max(shapes[-1]) > PYRAMID_TOP:
        if max(shapes[-1]) == 1:
            break
        shapes.append(tuple(-(-s // 2) for s in shapes[-1]))
    return shapes  # type: ignore[return-value]


def chunk_indices(shape: Sequence[int], chunks: Sequence[int]) -> list[Index]:
    """The chunks of an array, as indices (the last ones along an axis may be smaller)."""
    ranges = [[slice(a, min(a + c, s)) for a in range(0, s, c)] for s, c in zip(shape, chunks, strict=True)]
    return [(z, y, x) for z in ranges[0] for y in ranges[1] for x in ranges[2]]
