"""The lazy3d audit: the whole-volume (lazy) layer taken through the real napari viewer on odd
volumes, its pyramid levels and the 3D view. Each either lies exactly over its input, or says
what to do."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow  # a napari viewer
def test_every_pyramid_level_renders_where_napari_draws_it(qtbot, make_napari_viewer, tiny_user_weights):
    """napari draws level L's voxel k at level-0 index k * (level-0 size / level-L size) (its
    downsample factors; the level's own offset is not napari's to know), in 2D zoomed out and in
    3D (the coarsest level). The lazy layer rendered voxel k at the middle of the 2**L level-0 voxels
    the written pyramid averages: zoomed out and in 3D the image lay up to half a coarse voxel off
    its input, and along a short z (50 planes: levels of 25 and 13) nearly six level-0 voxels."""
    pytest.importorskip("napari")
    from napari_niiv._napari.commands import add_isotropic_layer

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    source = viewer.add_image(
        rng.random((5, 30, 600)).astype(np.float32), scale=(40, 4, 4), translate=(100, -8, 12), units="nm"
    )
    with qtbot.capture_exceptions() as exceptions:
        out = add_isotropic_layer(viewer, source, weights="user/tiny")
        lazy = out._niiv_progress.lazy
        assert len(lazy.shapes) == 3 and lazy.shapes[2] == (13, 8, 150)
        for level, shape in enumerate(lazy.shapes):
            coords = lazy.coords(level, tuple(slice(0, n) for n in shape))  # continuous input coordinates
            factors = out.downsample_factors[level]
            for axis in range(3):
                k = np.arange(shape[axis])
                at = np.zeros((len(k), 3))
                at[:, axis] = k * factors[axis]  # where napari draws them, in level-0 voxels
                drawn = np.asarray(out._data_to_world(at))[:, axis]
                inside = np.zeros((len(k), 3))
                inside[:, axis] = coords[axis] - 0.5  # input pixel i covers [i, i + 1)
                rendered = np.asarray(source._data_to_world(inside))[:, axis]
                np.testing.assert_allclose(rendered, drawn, atol=1e-6, err_msg=f"level {level}, axis {'zyx'[axis]}")
        viewer.dims.ndisplay = 3
        qtbot.waitUntil(lambda: not lazy.pending, timeout=60_000)
        viewer.dims.ndisplay = 2
    assert not exceptions, exceptions


def test_a_level_one_voxel_thick_shows_niiv_in_xz_and_yz_views(model) -> None:
    """Two sections at alpha 4 (8 output planes) 2100 px wide: from level 3 on, zoomed out, a level
    has one z voxel, so napari's xz view asks for a region thin in y (the slice) and in z (all of
    it). That read was taken for a line, answered with interpolation only and never queued: the
    xz and yz views of such a volume, zoomed out, silently never showed niiv."""
    from napari_niiv.data.normalise import fit_normalisation
    from napari_niiv.inference.geometry import output_geometry
    from napari_niiv.inference.lazy_volume import LazyIsotropic
    from napari_niiv.inference.reconstructor import Reconstructor
    from napari_niiv.inference.settings import InferenceSettings

    vol = np.random.default_rng(0).integers(0, 255, (2, 40, 2100)).astype(np.uint8)
    settings = InferenceSettings(alpha=4.0)
    lazy = LazyIsotropic(vol, fit_normalisation(vol), Reconstructor(model, settings), output_geometry(vol.shape, 4.0))
    try:
        level = 3
        assert lazy.shapes[level][0] == 1
        for axis in (1, 2):  # the xz view (y sliced), the yz view (x sliced)
            index = [slice(0, 1), slice(0, lazy.shapes[level][1]), slice(0, lazy.shapes[level][2])]
            index[axis] = slice(2, 3)
            first = lazy.get(level, tuple(index))
            assert lazy.pending > 0  # its tiles are queued
            assert lazy._worker.wait_idle(120) and lazy.pending == 0
            made = lazy.get(level, tuple(index))
            assert made.shape == first.shape and np.isfinite(made).all()
            assert not np.array_equal(made, first)  # niiv, no longer the interpolated stand-in
            keys = [k for k in lazy._tiles if k[0] == level and k[1] == axis]
            assert keys and all(k[2] == 2 for k in keys)
    finally:
        lazy.close()
