"""The confidence map (inference/confidence.py): ranks the real error on held-out FIB-SEM with the
shipped weights, has the reconstruction's geometry, stitches across blocks, and is the same map in
blocks, lazy tiles and live views (`niiv reconstruct --confidence`: test_confidence_cli.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_niiv.data import open_volume
from napari_niiv.data.degrade import pool_axis
from napari_niiv.data.normalise import fit_normalisation
from napari_niiv.inference import confidence
from napari_niiv.inference.geometry import chunk_indices, output_geometry
from napari_niiv.inference.lazy_volume import TILE, LazyIsotropic
from napari_niiv.inference.reconstructor import BlockReconstruction, NormalisedView, Reconstructor, assemble
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.inference.viewport import Camera, Frame, view_grid
from napari_niiv.inference.views import ViewRenderer
from tests.conftest import TINY, data_path, random_model

ALPHA = 4.0
FP32 = {"precision": "fp32", "device": "cpu"}


@pytest.fixture(scope="module")
def volume(medulla) -> np.ndarray:
    """Real FIB-SEM pooled by 4 along z: (10, 40, 44) uint8."""
    return pool_axis(medulla[:40, :40, :44].astype(np.float32), ALPHA, 0).astype(np.uint8)


def test_top_fraction_ratio_counts_exactly_the_top_voxels():
    error = np.array([1.0, 1.0, 1.0, 1.0, 6.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # mean 1.5
    perfect = np.arange(10.0) == 4
    assert confidence.top_fraction_ratio(perfect, error) == pytest.approx(4.0)  # 6 / 1.5
    assert confidence.top_fraction_ratio(-perfect.astype(float), error) == pytest.approx(1 / 1.5)
    with pytest.raises(ValueError):
        confidence.top_fraction_ratio(np.zeros(3), np.zeros(4))


def test_orientations_add_the_missing_slices_only_when_asked():
    s = InferenceSettings(alpha=8.0)
    assert confidence.orientations(s, "xz") == ("xz",)
    assert confidence.orientations(s, "yz", confidence=True) == ("yz", "xz")
    assert confidence.orientations(s.replace(orientation="both"), "xy", confidence=True) == ("xz", "yz")
    with pytest.raises(ValueError, match="xz and yz"):
        confidence.disagreement({"xz": np.zeros(3)})


@pytest.mark.slow
def test_map_is_higher_where_the_shipped_model_errs_on_held_out_fibsem():
    """medulla_b z 122-186 (never trained on), pooled by 8 as in training: voxels in the map's top
    10 % carry clearly more error than average, and the least sure tenth more than the surest half."""
    from napari_niiv.inference.weights import DEFAULT_WEIGHTS, load_weights, resolve_weights

    iso = np.asarray(open_volume(data_path("fibsem", "medulla_b.tif")).data[122:186, 60:124, 60:124])
    gt = iso.astype(np.float32) / 255.0
    low = pool_axis(gt, 8.0, 0)  # (8, 64, 64)
    model = load_weights(resolve_weights(DEFAULT_WEIGHTS)).model
    settings = InferenceSettings(alpha=8.0)
    geometry = output_geometry(low.shape, 8.0, 1.0, (8.0, 1.0, 1.0))
    job = BlockReconstruction(low, fit_normalisation(low), model, settings, geometry)
    image, umap = assemble(job), assemble(job.confidence_map())
    assert umap.shape == image.shape == geometry.size == gt.shape
    assert umap.dtype == np.float32 and np.all(np.isfinite(umap)) and umap.min() >= 0 and umap.max() > 0
    error = np.abs(image - gt)
    ratio = confidence.top_fraction_ratio(umap, error)
    assert ratio > 1.2, f"top-10 % error ratio {ratio:.3f}"
    order = np.argsort(umap.ravel())
    worst, surest = error.ravel()[order[-order.size // 10 :]], error.ravel()[order[: order.size // 2]]
    assert worst.mean() > 1.4 * surest.mean(), (worst.mean(), surest.mean())
    print(f"top-10 % error ratio {ratio:.3f}; least sure tenth / surest half {worst.mean() / surest.mean():.3f}")


@pytest.mark.slow
def test_blocks_stitch_and_keep_the_reconstruction_unchanged(volume):
    rec = Reconstructor(random_model(TINY), InferenceSettings(alpha=ALPHA, **FP32), slice_batch=8, tile=32)
    view = NormalisedView(volume, fit_normalisation(volume))
    shape = output_geometry(volume.shape, ALPHA).shape
    whole = tuple(slice(0, n) for n in shape)
    image, umap = rec.block_confidence(view, shape, whole)
    np.testing.assert_array_equal(image, rec.block(view, shape, whole))  # the map changes nothing
    assert umap.shape == shape and umap.max() > 0
    for index in chunk_indices(shape, (23, 21, shape[2])):  # 4 blocks, cut across z and y
        part_image, part_map = rec.block_confidence(view, shape, index)
        np.testing.assert_allclose(part_map, umap[index], atol=2e-5)
        np.testing.assert_allclose(part_image, image[index], atol=2e-5)


def test_lazy_tiles_and_live_views_show_the_blocks_map(volume):
    """A lazy tile's map is the block map at the tile's voxels; a live view's map is the
    disagreement of its xz and yz renders, reusing what a 'both' render decoded."""
    model = random_model(TINY)
    settings = InferenceSettings(alpha=ALPHA, orientation="both", **FP32)
    norm = fit_normalisation(volume)
    geometry = output_geometry(volume.shape, ALPHA, 1.0, (ALPHA, 1.0, 1.0))
    lazy = LazyIsotropic(volume, norm, Reconstructor(model, settings), geometry)
    try:
        assert [lv.shape for lv in lazy.confidence_levels] == [lv.shape for lv in lazy.levels]
        key = (0, 1, 7, 0, 0)  # level 0, an xz plane (y = 7), the first tile
        image, umap = lazy.compute_tiles(key)
        index = lazy._tile_index(key)
        assert umap.shape == image.shape == (min(TILE, geometry.shape[0]), 1, geometry.shape[2])
        block_image, block_map = Reconstructor(model, settings).block_confidence(
            NormalisedView(volume, norm), geometry.shape, index
        )
        np.testing.assert_allclose(umap, confidence.to_intensity(block_map, norm), atol=1e-3)
        np.testing.assert_allclose(image, norm.invert(block_image, np.float32), atol=1e-3)
    finally:
        lazy.close()

    frame = Frame(volume.shape, (ALPHA, 1.0, 1.0))
    grid = view_grid(Camera((20.0, 22.0), 1.3, (50, 40)), frame, (0, 2), 17.0, finest=0.5)
    renderer = ViewRenderer(volume, norm, Reconstructor(model, settings))
    calls = []
    engine = renderer.rec.engine
    plain_render = engine.render
    engine.render = lambda *a, **k: calls.append(1) or plain_render(*a, **k)
    parts: dict[str, np.ndarray] = {}
    both = renderer.render(grid, parts=parts)
    decoded = len(calls)
    umap = renderer.render_confidence(grid, parts=parts)
    assert len(calls) == decoded, "after a 'both' render the map decodes nothing more"
    assert umap.shape == both.shape == grid.shape
    one = {o: ViewRenderer(volume, norm, Reconstructor(model, settings.replace(orientation=o))) for o in ("xz", "yz")}
    xz, yz = one["xz"].render(grid), one["yz"].render(grid)
    np.testing.assert_allclose(umap, np.abs(xz - yz), atol=2e-5)
    np.testing.assert_allclose(both, (xz + yz) / 2, atol=2e-5)
    # an xz-only renderer computes the yz slices the map needs on its own
    np.testing.assert_allclose(one["xz"].render_confidence(grid), umap, atol=2e-5)
    assert one["xz"].render_confidence(grid, cancelled=lambda: True) is None


def test_lazy_map_reads_nan_until_computed_then_the_tile(volume):
    settings = InferenceSettings(alpha=ALPHA, **FP32)
    norm = fit_normalisation(volume)
    geometry = output_geometry(volume.shape, ALPHA)
    lazy = LazyIsotropic(volume, norm, Reconstructor(random_model(TINY), settings), geometry)
    try:
        plane = (slice(0, geometry.shape[0]), slice(5, 6), slice(0, geometry.shape[2]))
        assert np.all(np.isnan(lazy.get(0, plane, "confidence")))  # map off: nothing queued
        assert lazy.pending == 0
        lazy.enable_confidence()
        assert np.all(np.isnan(lazy.get(0, plane, "confidence")))  # unknown yet, never "confident"
        lazy._worker.wait_idle(60)
        assert lazy.pending == 0
        got = lazy.get(0, plane, "confidence")
        assert np.all(np.isfinite(got)) and got.max() > 0
        _, expect = lazy.compute_tiles((0, 1, 5, 0, 0))
        np.testing.assert_allclose(got, expect, atol=1e-4)
    finally:
        lazy.close()
