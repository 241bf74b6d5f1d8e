"""What part of a volume a 2D view shows, and where to sample it: pure functions of plain numbers.

No napari here, so the geometry is testable without a screen. Conventions:

- A layer maps data to world per axis, ``world = data * scale + translate`` (napari's, for an
  axis-aligned layer); napari's data coordinate ``d`` has pixel ``i`` centred at ``d = i``.
- The core's continuous input coordinate is ``u = d + 0.5`` (pixel ``i`` covers ``[i, i + 1)``).
- Data axes are (z, y, x); z is the anisotropic axis.
- A camera shows the world box ``center +- size / 2 / zoom`` on the two displayed axes, with
  ``zoom`` in screen pixels per world unit and ``size`` the (h, w) of one viewbox (the whole
  canvas, or one cell in grid mode). ``pixel_ratio`` (HiDPI) is device pixels per screen pixel.

The output grid is anchored to the volume's world edge, so panning at a fixed zoom samples the
same world positions; it is never finer than ``finest`` (the isotropic voxel over the output
scale) and never coarser than the screen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    """A 2D view: centre (world, on the displayed axes in screen order), zoom, viewbox size (h, w)."""

    center: tuple[float, float]
    zoom: float
    size: tuple[float, float]
    pixel_ratio: float = 1.0


@dataclass(frozen=True)
class Frame:
    """A 3D layer's data shape and its axis-aligned data-to-world transform."""

    shape: tuple[int, int, int]
    scale: tuple[float, float, float]
    translate: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def edge(self, axis: int) -> float:
        """World position of the volume's low edge along ``axis`` (half a voxel before pixel 0)."""
        return self.translate[axis] - 0.5 * self.scale[axis]

    def world_extent(self, axis: int) -> float:
        return self.shape[axis] * self.scale[axis]


@dataclass(frozen=True, eq=False)
class ViewGrid:
    """Where to sample the volume for one view: a separable grid of continuous input coordinates.

    ``coords[a]`` are the core's coordinates along data axis ``a``; the sliced (not displayed)
    axis has a single entry. ``world_start``/``world_step`` place output pixel 0 and its spacing in
    world units per axis, so a layer with that scale and translate sits exactly on the input.
    """

    coords: tuple[np.ndarray, np.ndarray, np.ndarray]
    sliced_axis: int
    spacing: float
    world_start: tuple[float, float, float]
    world_step: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(c.size for c in self.coords)  # type: ignore[return-value]

    @property
    def kind(self) -> str:
        """'xz', 'yz' or 'xy': the plane the view shows."""
        return plane_kind(self.sliced_axis)

    def same_as(self, other: ViewGrid | None) -> bool:
        """Same samples: a redraw would give the same image."""
        return (
            other is not None
            and self.sliced_axis == other.sliced_axis
            and self.shape == other.shape
            and all(np.allclose(a, b, rtol=0, atol=1e-9) for a, b in zip(self.coords, other.coords, strict=True))
        )


def plane_kind(sliced_axis: int) -> str:
    """The plane shown when ``sliced_axis`` is not displayed: 0 -> 'xy', 1 -> 'xz', 2 -> 'yz'."""
    return {0: "xy", 1: "xz", 2: "yz"}[sliced_axis]


def output_spacing(camera: Camera, finest: float) -> float:
    """World units per output pixel: the device pixel, but never finer than ``finest``."""
    if camera.zoom <= 0 or camera.pixel_ratio <= 0:
        raise ValueError("zoom and pixel ratio must be positive")
    return max(1.0 / (camera.zoom * camera.pixel_ratio), finest)


def axis_samples(
    frame: Frame, axis: int, lo: float, hi: float, spacing: float
) -> tuple[np.ndarray, float, float] | None:
    """Input coordinates of output pixels whose centres fall in the world range ``[lo, hi]``
    (clipped to the volume), on the lattice ``edge + (k + 0.5) * step``; also the world position
    of the first one, and ``step``. ``step`` is ``spacing`` shrunk just enough that a whole number
    of pixels spans the volume, so the last pixel ends at its far edge, not past it (at the
    output voxel it is the saved output's own lattice). None when the range misses the volume."""
    edge = frame.edge(axis)
    extent = frame.world_extent(axis)
    n_total = max(1, math.ceil(extent / spacing - 1e-9))
    step = extent / n_total
    k0 = max(0, math.floor((lo - edge) / step - 0.5 + 1e-9) + 1)
    k1 = min(n_total - 1, math.floor((hi - edge) / step - 0.5 + 1e-9))
    if k1 < k0:
        return None
    k = np.arange(k0, k1 + 1, dtype=np.float64)
    world = edge + (k + 0.5) * step
    return (world - edge) / frame.scale[axis], float(world[0]), step


def view_grid(
    camera: Camera,
    frame: Frame,
    displayed: tuple[int, int],
    point: float,
    finest: float,
    max_pixels: int | None = None,
    finest_z: float | None = None,
) -> ViewGrid | None:
    """The grid of samples covering what ``camera`` shows of ``frame``.

    ``displayed`` are the data axes on screen rows and columns; ``point`` is the world position
    on the remaining (sliced) axis. xz/yz views sample the acquired plane napari shows there (the
    nearest pixel); xy views sample z continuously, between acquired slices. ``max_pixels`` caps
    the work for very large screens by coarsening the spacing. ``finest_z``: the output's z voxel
    in world units where it is finer than ``finest``: a layer without voxel sizes (scale 1, 1, 1,
    shown squashed in z) at a typed alpha 10 has output z voxels of 0.1, and z is sampled that
    finely, screen allowing (else one row per acquired plane: no niiv between planes at all). None
    when nothing is visible.
    """
    if len(set(displayed)) != 2 or not set(displayed) <= {0, 1, 2}:
        raise ValueError(f"displayed must be two distinct axes of 0, 1, 2; got {displayed}")
    sliced = ({0, 1, 2} - set(displayed)).pop()
    spacing = output_spacing(camera, finest)
    z_finest = min(finest, finest_z) if finest_z is not None else finest
    step = [spacing] * 3
    if z_finest < finest:  # z displayed: sampled finer than the in-plane spacing (xy: set below)
        step[0] = output_spacing(camera, z_finest)
    if max_pixels is not None:  # the rows and columns sampled, z's finer rows included
        rows, cols = (size / camera.zoom / step[axis] for axis, size in zip(displayed, camera.size, strict=True))
        if rows * cols > max_pixels:
            coarsen = math.sqrt(rows * cols / max_pixels)
            spacing *= coarsen
            step = [s * coarsen for s in step]
    coords: list[np.ndarray] = [np.empty(0)] * 3
    start = [0.0, 0.0, 0.0]
    for axis, centre, size in zip(displayed, camera.center, camera.size, strict=True):
        half = size / 2.0 / camera.zoom
        samples = axis_samples(frame, axis, centre - half, centre + half, step[axis])
        if samples is None:
            return None
        coords[axis], start[axis], step[axis] = samples
    d = (point - frame.translate[sliced]) / frame.scale[sliced]
    if not -0.5 <= d <= frame.shape[sliced] - 0.5:
        return None
    if sliced == 0:  # xy: any z, between acquired slices too
        coords[0] = np.array([d + 0.5])
        start[0], step[0] = point, z_finest
    else:  # xz / yz: the acquired plane napari shows at this point
        index = min(frame.shape[sliced] - 1, max(0, round(d)))
        coords[sliced] = np.array([index + 0.5])
        start[sliced] = frame.translate[sliced] + index * frame.scale[sliced]
        step[sliced] = frame.scale[sliced]
    return ViewGrid(tuple(coords), sliced, spacing, tuple(start), tuple(step))  # type: ignore[arg-type]


def finest_spacing(frame: Frame, output_scale: float) -> float:
    """The isotropic output voxel in world units: the in-plane voxel times the output scale."""
    return min(frame.scale[1], frame.scale[2]) * output_scale
