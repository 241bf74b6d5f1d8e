"""The visible-region math: camera + layer transform -> which samples the screen shows."""

from __future__ import annotations

import numpy as np
import pytest

from napari_niiv.inference.viewport import Camera, Frame, finest_spacing, output_spacing, view_grid

FRAME = Frame(shape=(10, 50, 60), scale=(8.0, 1.0, 1.0))


def world_of(grid, frame, axis):
    """World positions of the grid's samples along ``axis``, from the core coordinates."""
    return (grid.coords[axis] - 0.5) * frame.scale[axis] + frame.translate[axis]


def test_xz_view_whole_slice_at_isotropic_resolution():
    grid = view_grid(Camera((36.0, 30.0), 1.0, (200, 200)), FRAME, (0, 2), 20.3, finest=1.0)
    assert grid.kind == "xz" and grid.sliced_axis == 1
    assert grid.shape == (80, 1, 60)  # 10 planes x alpha 8 rows, every column
    np.testing.assert_allclose(grid.coords[0], (np.arange(80) + 0.5) / 8)
    np.testing.assert_allclose(grid.coords[2], np.arange(60) + 0.5)
    assert grid.coords[1].tolist() == [20.5]  # the acquired plane napari shows (nearest, 20)


def test_visible_box_is_centre_plus_minus_half_the_viewbox():
    grid = view_grid(Camera((36.0, 30.0), 2.0, (40, 20)), FRAME, (0, 2), 0.0, finest=0.25)
    # 2 screen px per world unit: 20 x 10 world units visible, sampled every 0.5
    w_z, w_x = world_of(grid, FRAME, 0), world_of(grid, FRAME, 2)
    assert w_z.min() >= 36 - 10 and w_z.max() <= 36 + 10 and grid.shape[0] == 40
    assert w_x.min() >= 30 - 5 and w_x.max() <= 30 + 5 and grid.shape[2] == 20
    assert grid.spacing == 0.5


def test_never_finer_than_isotropic_and_screen_resolution_when_zoomed_out():
    cam = Camera((36.0, 30.0), 8.0, (100, 100))
    assert view_grid(cam, FRAME, (0, 2), 0.0, finest=1.0).spacing == 1.0
    far = view_grid(Camera((36.0, 30.0), 0.25, (100, 100)), FRAME, (0, 2), 0.0, finest=1.0)
    assert far.spacing == 4.0 and far.shape == (20, 1, 15)


def test_hidpi_samples_device_pixels():
    assert output_spacing(Camera((0, 0), 0.5, (10, 10), pixel_ratio=2.0), 0.1) == 1.0
    lo = view_grid(Camera((36.0, 30.0), 0.5, (100, 100)), FRAME, (0, 2), 0.0, finest=0.1)
    hi = view_grid(Camera((36.0, 30.0), 0.5, (100, 100), pixel_ratio=2.0), FRAME, (0, 2), 0.0, finest=0.1)
    assert hi.shape[0] == 2 * lo.shape[0] and hi.shape[2] == 2 * lo.shape[2]


def test_yz_view_and_transposed_display():
    grid = view_grid(Camera((25.0, 36.0), 1.0, (100, 200)), FRAME, (1, 0), 7.0, finest=1.0)
    assert grid.kind == "yz" and grid.coords[2].tolist() == [7.5] and grid.shape == (80, 50, 1)


def test_xy_view_between_acquired_slices():
    grid = view_grid(Camera((25.0, 30.0), 1.0, (100, 100)), FRAME, (1, 2), 12.0, finest=1.0)
    assert grid.kind == "xy" and grid.shape == (1, 50, 60)
    assert grid.coords[0].tolist() == [12 / 8 + 0.5]  # z = 12 nm is between acquired planes 1 and 2
    assert grid.world_start[0] == 12.0


def test_a_typed_alpha_samples_z_at_the_output_voxel_screen_allowing():
    """A layer without voxel sizes (scale 1, 1, 1: napari shows it squashed) at a typed alpha 8:
    the output's z voxel is 1/8 of a world unit. Sampled at the in-plane voxel, z got one row per
    acquired plane, the input itself; now as finely as the screen shows (and no finer)."""
    flat = Frame(shape=(10, 50, 60), scale=(1.0, 1.0, 1.0))
    zoomed = view_grid(Camera((4.5, 29.5), 4.0, (40, 240)), flat, (0, 2), 0.0, finest=1.0, finest_z=0.125)
    assert zoomed.world_step[0] == 0.25 and zoomed.world_step[2] == 1.0  # a device pixel in z, a voxel in x
    assert zoomed.shape == (40, 1, 60)  # 4 rows per acquired plane, every column
    np.testing.assert_allclose(zoomed.coords[0], (np.arange(40) + 0.5) / 4)
    closer = view_grid(Camera((4.5, 29.5), 16.0, (160, 960)), flat, (0, 2), 0.0, finest=1.0, finest_z=0.125)
    assert closer.world_step[0] == 0.125 and closer.shape[0] == 80  # never finer than the output voxel
    xy = view_grid(Camera((25.0, 30.0), 1.0, (100, 100)), flat, (1, 2), 3.3, finest=1.0, finest_z=0.125)
    assert xy.world_step[0] == 0.125 and xy.coords[0].tolist() == [3.8]  # the slider steps between planes
    plain = view_grid(Camera((4.5, 29.5), 4.0, (40, 240)), flat, (0, 2), 0.0, finest=1.0)
    assert plain.shape[0] == 10  # without it: one row per plane


def test_the_work_cap_counts_the_finer_z_rows():
    """The cap on a view's pixels counted rows at the in-plane spacing while z was sampled finer (a
    layer without voxel sizes at a typed alpha 10): a 4K HiDPI screen on a tall stack computed 2.8
    times the cap (the review of bf39479). Now the rows z is sampled at count, and z stays finer."""
    tall = Frame(shape=(3000, 4000, 4000), scale=(1.0, 1.0, 1.0))
    camera = Camera((1500.0, 2000.0), 1.5, (2160.0, 3840.0), pixel_ratio=2.0)
    grid = view_grid(camera, tall, (0, 2), 2000.0, finest=1.0, max_pixels=4_000_000, finest_z=0.1)
    assert grid.shape[0] * grid.shape[2] <= 4_000_000 * 1.01
    assert grid.world_step[0] < grid.world_step[2]  # still more rows than a row per in-plane voxel
    plain = view_grid(camera, tall, (0, 2), 2000.0, finest=1.0, max_pixels=4_000_000)
    assert plain.shape == (1440, 1, 2560)  # without finest_z: as before


def test_anisotropic_scale_and_translate_land_on_the_input():
    frame = Frame(shape=(12, 40, 30), scale=(40.0, 5.0, 5.0), translate=(100.0, -20.0, 7.0))
    grid = view_grid(Camera((300.0, 60.0), 0.3, (120, 90)), frame, (0, 2), 37.0, finest=finest_spacing(frame, 1.0))
    for axis in (0, 2):
        start, step = grid.world_start[axis], grid.world_step[axis]
        np.testing.assert_allclose(world_of(grid, frame, axis), start + step * np.arange(grid.shape[axis]))
        assert world_of(grid, frame, axis).min() >= frame.translate[axis] - 0.5 * frame.scale[axis]
    # the sliced plane sits where napari draws the input's plane: data index round((37 + 20) / 5) = 11
    assert grid.coords[1].tolist() == [11.5] and grid.world_start[1] == -20.0 + 11 * 5.0
    np.testing.assert_allclose(np.diff(world_of(grid, frame, 0)), grid.spacing)


def test_panning_keeps_the_sample_lattice():
    a = view_grid(Camera((36.0, 30.0), 2.0, (20, 20)), FRAME, (0, 2), 0.0, finest=0.5)
    b = view_grid(Camera((37.3, 31.1), 2.0, (20, 20)), FRAME, (0, 2), 0.0, finest=0.5)
    common = np.intersect1d(a.coords[2], b.coords[2])
    assert common.size >= a.shape[2] - 3  # same lattice: shifted, not resampled
    assert not a.same_as(b) and a.same_as(view_grid(Camera((36.0, 30.0), 2.0, (20, 20)), FRAME, (0, 2), 0.0, 0.5))


def test_grid_mode_viewbox_shows_less():
    full = view_grid(Camera((36.0, 30.0), 2.0, (100, 100)), FRAME, (0, 2), 0.0, finest=0.5)
    cell = view_grid(Camera((36.0, 30.0), 2.0, (100, 50)), FRAME, (0, 2), 0.0, finest=0.5)
    assert cell.shape[0] == full.shape[0] and cell.shape[2] == full.shape[2] // 2


def test_nothing_visible_and_bad_axes():
    assert view_grid(Camera((36.0, 500.0), 1.0, (100, 100)), FRAME, (0, 2), 0.0, finest=1.0) is None
    assert view_grid(Camera((36.0, 30.0), 1.0, (100, 100)), FRAME, (0, 2), 99.0, finest=1.0) is None
    with pytest.raises(ValueError):
        view_grid(Camera((0, 0), 1.0, (10, 10)), FRAME, (0, 0), 0.0, finest=1.0)


def test_pixel_cap_coarsens():
    grid = view_grid(Camera((36.0, 30.0), 4.0, (400, 400)), FRAME, (0, 2), 0.0, finest=0.25, max_pixels=1000)
    assert grid.shape[0] * grid.shape[2] <= 1100


@pytest.mark.parametrize("zoom", [0.3, 0.7, 1.3, 3.0])
def test_the_last_pixel_ends_at_the_volume_edge_not_past_it(zoom):
    # a volume whose extent is no multiple of the screen's spacing: 16 planes x 8, 50 x 1, 61 x 1
    frame = Frame(shape=(16, 50, 61), scale=(8.0, 1.0, 1.0), translate=(3.0, 0.0, -2.0))
    grid = view_grid(Camera((60.0, 28.0), zoom, (2000, 2000)), frame, (0, 2), 20.0, finest=1.0)
    for axis in (0, 2):
        lo = grid.world_start[axis] - grid.world_step[axis] / 2
        hi = grid.world_start[axis] + (grid.shape[axis] - 0.5) * grid.world_step[axis]
        assert lo == pytest.approx(frame.edge(axis)), axis  # the whole volume is on screen
        assert hi == pytest.approx(frame.edge(axis) + frame.world_extent(axis)), axis
        assert grid.world_step[axis] <= max(grid.spacing, 1.0) + 1e-12  # never coarser than asked
        np.testing.assert_allclose(np.diff(world_of(grid, frame, axis)), grid.world_step[axis])


def test_at_the_output_voxel_the_view_is_the_saved_outputs_lattice():
    grid = view_grid(Camera((36.0, 30.0), 1.0, (200, 200)), FRAME, (0, 2), 20.3, finest=1.0)
    assert grid.world_step[0] == 1.0 and grid.world_step[2] == 1.0 and grid.shape == (80, 1, 60)
