"""The one output geometry: shapes, voxel sizes and translations in napari's pixel-centre convention."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_niiv.errors import NiivInputError
from napari_niiv.inference.geometry import (
    chunk_indices,
    drawn_level_coords,
    output_coords,
    output_geometry,
    pyramid_shapes,
)
from napari_niiv.inference.settings import InferenceSettings


def test_first_output_voxel_sits_half_an_input_voxel_minus_half_an_output_voxel_before_the_input() -> None:
    """alpha 10, 40 nm sections, 4 nm pixels: the NOTES example, -18 nm."""
    g = output_geometry((10, 100, 100), 10.0, 1.0, (40.0, 4.0, 4.0))
    assert g.shape == (100, 100, 100)
    assert g.voxel_size == pytest.approx((4.0, 4.0, 4.0))
    assert g.translation == pytest.approx((-18.0, 0.0, 0.0))
    g = output_geometry((10, 100, 100), 10.0, 1.0, (40.0, 4.0, 4.0), translation=(100.0, 8.0, -4.0))
    assert g.translation == pytest.approx((82.0, 8.0, -4.0))


@pytest.mark.parametrize(("alpha", "scale"), [(10.0, 1.0), (8.0, 2.0), (5.5, 0.5), (3.0, 0.7)])
def test_output_tiles_exactly_the_input_extent(alpha, scale) -> None:
    shape, voxel, t = (7, 30, 41), (alpha * 3.0, 3.0, 3.0), (5.0, -2.0, 11.0)
    g = output_geometry(shape, alpha, scale, voxel, t)
    for axis in range(3):
        lo_in = t[axis] - voxel[axis] / 2
        hi_in = lo_in + shape[axis] * voxel[axis]
        lo_out = g.translation[axis] - g.voxel_size[axis] / 2
        hi_out = lo_out + g.shape[axis] * g.voxel_size[axis]
        assert lo_out == pytest.approx(lo_in, abs=1e-9) and hi_out == pytest.approx(hi_in, abs=1e-9)


def test_world_position_agrees_with_the_model_coordinates() -> None:
    """Output index k is read at input coordinate (k + 0.5) n_in / n_out, i.e. at input data index
    u - 0.5, whose world position is that index times the input voxel plus the translation."""
    shape, alpha, voxel, t = (6, 20, 20), 7.0, (21.0, 3.0, 3.0), (4.0, 1.0, 2.0)
    g = output_geometry(shape, alpha, 1.0, voxel, t)
    for axis in range(3):
        u = output_coords(shape[axis], g.shape[axis])
        world_model = (u - 0.5) * voxel[axis] + t[axis]
        world_out = g.translation[axis] + np.arange(g.shape[axis]) * g.voxel_size[axis]
        np.testing.assert_allclose(world_out, world_model, atol=1e-9)


def test_unknown_voxel_sizes_give_an_isotropic_output_of_the_xy_voxel() -> None:
    """--alpha on a file without voxel sizes: (1, 1, 1) at scale 1, never (1/alpha, 1, 1)."""
    g = output_geometry((10, 50, 50), 10.0, 1.0, None)
    assert g.voxel_size == pytest.approx((1.0, 1.0, 1.0))
    assert g.translation == pytest.approx((-4.5, 0.0, 0.0))
    assert output_geometry((10, 50, 50), 10.0, 2.0, None).voxel_size == pytest.approx((2.0, 2.0, 2.0))


def test_a_region_is_placed_where_it_is_in_the_whole_output() -> None:
    whole = output_geometry((16, 100, 100), 8.0, 1.0, (32.0, 4.0, 4.0), (10.0, 0.0, 0.0))
    part = output_geometry(
        (16, 100, 100), 8.0, 1.0, (32.0, 4.0, 4.0), (10.0, 0.0, 0.0), region=(slice(2, 4), slice(8, 16), slice(0, 8))
    )
    assert part.region == (slice(16, 32), slice(8, 16), slice(0, 8)) and part.size == (16, 8, 8)
    assert part.world((0, 0, 0)) == pytest.approx(whole.world((16, 8, 0)))


def test_pyramid_levels_sit_on_the_averages_of_their_voxels() -> None:
    g = output_geometry((8, 64, 64), 4.0, 1.0, (8.0, 2.0, 2.0))
    voxel, shift = g.level(2)
    assert voxel == pytest.approx(tuple(4 * v for v in g.voxel_size))
    # the centre of level-2 voxel 0 is the mean of level-0 voxels 0..3
    assert shift == pytest.approx(tuple(t + 1.5 * v for t, v in zip(g.translation, g.voxel_size, strict=True)))
    # the lazy layer renders a level where napari draws it, not at those centres: napari puts level
    # voxel k at level-0 index k * (level-0 size / level size), halved sizes rounded up included
    np.testing.assert_allclose(drawn_level_coords(8, 32, 8), (np.arange(8) * 4 + 0.5) * (8 / 32))
    np.testing.assert_allclose(drawn_level_coords(5, 50, 13, 12, 13), [(12 * 50 / 13 + 0.5) * (5 / 50)])


def test_pyramid_shapes_and_chunks_cover_the_volume() -> None:
    assert pyramid_shapes((300, 20, 9)) == [(300, 20, 9), (150, 10, 5)]
    assert pyramid_shapes((5, 5, 5), levels=3) == [(5, 5, 5), (3, 3, 3), (2, 2, 2)]
    chunks = chunk_indices((10, 7, 5), (4, 4, 4))
    covered = np.zeros((10, 7, 5), int)
    for index in chunks:
        covered[index] += 1
    assert (covered == 1).all() and len(chunks) == 3 * 2 * 2


@pytest.mark.parametrize("bad", [(0.0, 1.0, 1.0), (-4.0, 4.0, 4.0), (math.nan, 4.0, 4.0), (math.inf, 1.0, 1.0)])
def test_unusable_voxel_sizes_are_refused(bad) -> None:
    with pytest.raises(NiivInputError, match="voxel size"):
        output_geometry((4, 20, 20), 4.0, 1.0, bad)


def test_settings_are_validated_and_resolve_auto_in_one_place() -> None:
    s = InferenceSettings(alpha=8)
    assert s.orientations("xz") == ("xz",) and s.orientations("yz") == ("yz",) and s.orientations("xy") == ("xz",)
    assert s.volume_orientation == "xz"
    assert InferenceSettings(alpha=8, orientation="both").orientations("yz") == ("xz", "yz")
    resolved = s.resolved()
    assert resolved.device == "cpu" and resolved.precision in ("fp32", "bf16")
    for bad in ({"alpha": 0.5}, {"alpha": math.nan}, {"alpha": 8, "scale": 0}, {"alpha": 8, "orientation": "xy"}):
        with pytest.raises(NiivInputError):
            InferenceSettings(**bad)
    with pytest.raises(AttributeError):
        s.alpha = 4  # type: ignore[misc]  # frozen: one object, never changed on the way
