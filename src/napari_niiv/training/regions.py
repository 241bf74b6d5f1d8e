"""Which part of a volume fine-tuning learns from, and which xy planes it keeps out to check itself.

Pure functions of index ranges (no napari). A region is three ``slice`` objects in data voxels
(z, y, x). Training uses the region's xy planes; the last planes of the largest region are held
out, never trained on, and score the model as training goes: pooled by alpha along an in-plane
axis and reconstructed, exactly the training task on data it has not seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..data.io import Volume
from ..errors import NiivInputError
from ..inference.geometry import check_region

Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class TrainingSplit:
    """Regions to train on with the z planes each may use, and the held-out planes."""

    regions: list[Region]
    z_ranges: list[tuple[int, int]]
    held_out: Region


def whole(shape: Sequence[int]) -> Region:
    return tuple(slice(0, int(n)) for n in shape)  # type: ignore[return-value]


def clip_region(region: Region, shape: Sequence[int]) -> Region:
    out = []
    for s, n in zip(region, shape, strict=True):
        lo, hi = max(0, int(s.start)), min(int(n), int(s.stop))
        out.append(slice(lo, max(lo, hi)))
    return tuple(out)  # type: ignore[return-value]


def visible_region(coords: Sequence[np.ndarray], sliced_axis: int, shape: Sequence[int]) -> Region:
    """The voxels a view shows along its two displayed axes (``coords`` as in a ViewGrid), and the
    whole volume along the sliced axis: training needs many xy planes, not the one on screen."""
    out = []
    for axis, (c, n) in enumerate(zip(coords, shape, strict=True)):
        if axis == sliced_axis:
            out.append(slice(0, int(n)))
        else:
            out.append(slice(int(np.floor(c.min())), int(np.ceil(c.max()))))
    return clip_region(tuple(out), shape)  # type: ignore[arg-type]


def box_region(vertices_data: np.ndarray, shape: Sequence[int]) -> Region:
    """A box from a shape's vertices in data coordinates (napari's, pixel centres at integers).
    Axes the shape is flat along (a rectangle drawn in an xy view has one z) span the volume."""
    v = np.asarray(vertices_data, dtype=float)[:, -3:]
    out = []
    for axis, n in enumerate(shape):
        lo, hi = v[:, axis].min(), v[:, axis].max()
        if hi - lo < 1:
            out.append(slice(0, int(n)))
        else:
            out.append(slice(int(np.floor(lo + 0.5)), int(np.ceil(hi + 0.5))))
    return clip_region(tuple(out), shape)  # type: ignore[arg-type]


def volume_region(vol: Volume, region: Sequence[slice]) -> Volume:
    """The part of ``vol`` inside ``region`` (data voxels; a region outside the volume is refused,
    never clipped), placed in the world where it lies in the volume."""
    r = check_region(region, vol.shape)
    shift = tuple(t + s.start * v for t, s, v in zip(vol.translation, r, vol.voxel_size, strict=True))
    return replace(vol, data=vol.data[r], pyramid=(), translation=shift)  # type: ignore[arg-type]


def split_training(
    regions: Sequence[Region], crop: int, alpha: float, held_out_fraction: float = 0.2, min_held_out: int = 2
) -> TrainingSplit:
    """Keep the last planes of the largest region out of training, and check that every region
    is large enough for the training crop."""
    usable = []
    for r in regions:
        z, y, x = (s.stop - s.start for s in r)
        if z < 1 or min(y, x) < crop:
            continue
        usable.append(r)
    if not usable:
        raise NiivInputError(
            f"no region is at least {crop}x{crop} px in xy (the training crop): draw larger boxes, "
            "zoom out, or train on the whole volume"
        )
    big = max(range(len(usable)), key=lambda i: np.prod([s.stop - s.start for s in usable[i]]))
    z0, z1 = usable[big][0].start, usable[big][0].stop
    n_held = max(min_held_out, round((z1 - z0) * held_out_fraction))
    if z1 - z0 - n_held < 1:
        raise NiivInputError(
            f"the region has {z1 - z0} xy plane(s): at least {n_held + 1} are needed to train and hold some out; "
            "learn from a volume (or a region) with more xy planes"
        )
    held = (slice(z1 - n_held, z1), usable[big][1], usable[big][2])
    z_ranges = [(0, r[0].stop - r[0].start) for r in usable]
    z_ranges[big] = (0, z1 - n_held - z0)
    if held[1].stop - held[1].start < 2 * alpha:
        raise NiivInputError(f"the held-out region is too small for alpha {alpha}")
    # another region over the held-out voxels (overlapping boxes) trains on its planes below or
    # above them, whichever are more, never on them; one with none left is dropped
    kept = []
    for i, r in enumerate(usable):
        if i != big and all(_overlap(r[a], held[a]) for a in range(3)):
            a, b = r[0].start, r[0].stop
            below, above = (0, max(0, held[0].start - a)), (min(b, held[0].stop) - a, b - a)
            z_ranges[i] = max(below, above, key=lambda zr: zr[1] - zr[0])
        if z_ranges[i][1] > z_ranges[i][0]:
            kept.append(i)
    return TrainingSplit([usable[i] for i in kept], [z_ranges[i] for i in kept], held)  # type: ignore[arg-type]


def _overlap(a: slice, b: slice) -> bool:
    return max(a.start, b.start) < min(a.stop, b.stop)
