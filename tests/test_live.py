"""Live rendering of a view: preview, niiv equal to the core's slice decoding, latent cache, cancel;
the lazy whole-volume layer's tiles on its newest-wins worker."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_niiv.data.normalise import fit_normalisation
from napari_niiv.inference.reconstructor import Reconstructor, interpolate_planes
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.inference.viewport import Camera, Frame, ViewGrid, view_grid
from napari_niiv.inference.views import COARSE_MIN_PIXELS, ViewRenderer, coarse_grid, upsample
from tests.conftest import random_model, read_noting

ALPHA = 4.0


@pytest.fixture(scope="module")
def volume(medulla) -> np.ndarray:
    """Real FIB-SEM pooled by 4 along z: (12, 48, 56)."""
    from napari_niiv.data.degrade import pool_axis

    return pool_axis(medulla[:48, :48, :56].astype(np.float32), ALPHA, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def renderer(volume) -> ViewRenderer:
    rec = Reconstructor(random_model(), InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu"), slice_batch=4)
    return ViewRenderer(volume, fit_normalisation(volume), rec)


def frame_of(volume) -> Frame:
    return Frame(volume.shape, (ALPHA, 1.0, 1.0))


def reference(renderer, volume, grid, orient) -> np.ndarray:
    """The core's untiled decoding of whole slices at the grid's coordinates."""
    norm = renderer.norm.apply(volume)
    plane_axis, col_axis = (1, 2) if orient == "xz" else (2, 1)
    planes = np.moveaxis(interpolate_planes(norm, grid.coords[plane_axis], plane_axis, 0), plane_axis, 0)
    rec = Reconstructor(renderer.rec.model, InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu"), tile=10_000)
    dec = rec.planes(planes, grid.coords[0], grid.coords[col_axis])  # (P, rows, cols)
    return np.moveaxis(dec, (0, 1, 2), (plane_axis, 0, col_axis))


@pytest.mark.parametrize(
    ("displayed", "point", "orientation"),
    [((0, 2), 20.0, "auto"), ((0, 1), 9.0, "auto"), ((1, 2), 13.0, "auto"), ((0, 2), 20.0, "both")],
)
def test_niiv_view_equals_core_decoding(renderer, volume, displayed, point, orientation):
    centre = tuple(frame_of(volume).world_extent(a) / 2 for a in displayed)
    grid = view_grid(Camera(centre, 1.7, (60, 50)), frame_of(volume), displayed, point, finest=0.5)
    settings = renderer.rec.settings.replace(orientation=orientation)
    out = ViewRenderer(volume, renderer.norm, Reconstructor(renderer.rec.model, settings)).render(grid)
    assert out.shape == grid.shape
    orients = settings.orientations(grid.kind)
    expect = np.mean([reference(renderer, volume, grid, o) for o in orients], axis=0)
    np.testing.assert_allclose(out, expect, atol=2e-5)
    # the preview is the interpolation niiv refines: close, but not the same
    assert 0 < np.abs(renderer.preview(grid) - out).mean() < 0.1


def test_a_block_of_planes_decoded_one_at_a_time_equals_the_core_decoding(renderer, volume, monkeypatch):
    """The lazy layer's 3D overview (several planes, one region): with planes too large to copy
    into one batch each plane is decoded on its own, and the result is the core's all the same."""
    from napari_niiv.inference import views
    from napari_niiv.inference.viewport import ViewGrid

    coords = ((np.arange(40) + 0.5) / ALPHA, np.arange(2.0, 48, 6), np.arange(1.5, 56, 4))
    grid = ViewGrid(coords, 1, 0.0, (0, 0, 0), (1, 1, 1))
    rec = Reconstructor(renderer.rec.model, renderer.rec.settings, slice_batch=8)
    monkeypatch.setattr(views, "ENCODE_VALUES", 1)  # one plane per encoder pass, 8 per decoding
    groups: list[int] = []
    batched = views._batched
    monkeypatch.setattr(views, "_batched", lambda e, r: [groups.append(len(g[0])) or g for g in batched(e, r)])
    one_batch = ViewRenderer(volume, renderer.norm, rec).render(grid)
    assert groups == [8]
    groups.clear()
    monkeypatch.setattr(views, "CONCAT_BYTES", 0)
    out = ViewRenderer(volume, renderer.norm, rec).render(grid)
    assert groups == [1] * 8
    np.testing.assert_allclose(out, reference(renderer, volume, grid, "xz"), atol=2e-5)
    np.testing.assert_allclose(out, one_batch, atol=1e-6)


def test_preview_is_trilinear_and_exact_on_acquired_pixels(renderer, volume):
    grid = view_grid(Camera((24.0, 28.0), 1.0, (100, 100)), frame_of(volume), (1, 2), 2 * ALPHA, finest=1.0)
    np.testing.assert_allclose(renderer.preview(grid)[0], renderer.norm.apply(volume[2]), atol=1e-6)


@pytest.mark.slow
def test_xy_view_between_planes_equals_core_decoding(renderer, volume):
    """An xy view at a z between acquired planes, decoded in many plane batches (each from the few
    latent rows around z) and after the progressive pass (batches of cached and fresh planes),
    is the core's decoding of the interpolated planes."""
    grid = view_grid(Camera((24.0, 28.0), 6.0, (300, 340)), frame_of(volume), (1, 2), 13.0, finest=0.1)
    z = grid.coords[0][0]
    assert grid.kind == "xy" and grid.coords[0].size == 1 and 3.5 < z < 4.5  # between planes 3 and 4
    assert grid.shape[1] * grid.shape[2] > COARSE_MIN_PIXELS
    expect = reference(renderer, volume, grid, "xz")
    rec = Reconstructor(renderer.rec.model, renderer.rec.settings, slice_batch=4)
    plain = ViewRenderer(volume, renderer.norm, rec)
    np.testing.assert_allclose(plain.render(grid), expect, atol=2e-5)
    progressive = ViewRenderer(volume, renderer.norm, rec)
    frames = []
    out = progressive.render(grid, coarse=frames.append)
    assert len(frames) == 1 and progressive.cache.hits > 0  # the coarse pass's latents are reused
    np.testing.assert_allclose(out, expect, atol=2e-5)
    # planes are cached with the latent rows around z only; an xz view through one of them
    # (same cache key) needs all rows, so it is encoded again, not decoded from the few rows kept
    entries = list(progressive.cache._entries.values())
    assert entries and all(e.held[1] - e.held[0] < volume.shape[0] for e in entries)
    y = grid.coords[1][7]
    xz = ViewGrid(((np.arange(40) + 0.5) / 4 + 1, np.array([y]), grid.coords[2]), 1, 0.25, (0, 0, 0), (1, 1, 1))
    np.testing.assert_allclose(progressive.render(xz), reference(renderer, volume, xz, "xz"), atol=2e-5)


def test_a_lazy_input_is_read_ahead_in_few_reads_to_the_same_image(renderer, volume, monkeypatch):
    """A dask input is read a block of planes at a time ahead of the encoder batches (each read
    has a fixed cost and decompresses every chunk it touches), not once per batch of 4 planes;
    the image is the one rendered from the array in memory, and nothing is held after the render."""
    import dask.array as da

    from napari_niiv.inference import views
    from napari_niiv.inference.reconstructor import NormalisedView

    reads = []
    original = NormalisedView.__getitem__
    monkeypatch.setattr(NormalisedView, "__getitem__", lambda self, i: reads.append(i) or original(self, i))
    grid = view_grid(Camera((24.0, 28.0), 6.0, (60, 80)), frame_of(volume), (1, 2), 13.0, finest=0.1)
    rec = Reconstructor(renderer.rec.model, renderer.rec.settings, slice_batch=4)
    expect = ViewRenderer(volume, renderer.norm, rec).render(grid)
    in_memory = len(reads)
    assert in_memory > 4  # one read per batch of 4 planes
    reads.clear()
    lazy = ViewRenderer(da.from_array(volume, chunks=(4, 16, 16)), renderer.norm, rec)
    np.testing.assert_array_equal(lazy.render(grid), expect)
    assert len(reads) == 1 and lazy._ahead is None
    reads.clear()
    monkeypatch.setattr(views, "READ_AHEAD_BYTES", 4 * 12 * 56 * 10)  # 10 planes at a time
    np.testing.assert_array_equal(ViewRenderer(da.from_array(volume), renderer.norm, rec).render(grid), expect)
    assert 1 < len(reads) < in_memory
    # a NaN in a plane the view needs later is still refused, read ahead or not
    bad = volume.astype(np.float32)
    bad[:, 29, 26] = np.nan  # in the last planes the view reads
    with pytest.raises(Exception, match="NaN"):
        ViewRenderer(da.from_array(bad), renderer.norm, rec).render(grid)


def test_encoding_a_plane_stops_between_batches_when_cancelled(renderer, volume):
    """The lazy layer encodes a plane's slices together; closing it waited for all of them (an xy
    plane is every xz slice: the viewer froze 10 s on close, found by the lazy-layer audit)."""
    grid = view_grid(Camera((24.0, 28.0), 6.0, (60, 80)), frame_of(volume), (1, 2), 13.0, finest=0.1)
    rec = Reconstructor(renderer.rec.model, renderer.rec.settings, slice_batch=4)
    everything = ViewRenderer(volume, renderer.norm, rec)
    whole = everything.encode(grid)
    assert len(whole) > 2
    asked = []

    def after_two() -> bool:
        asked.append(1)
        return len(asked) > 2

    stopped = ViewRenderer(volume, renderer.norm, rec)
    fresh = stopped.encode(grid, cancelled=after_two)
    assert 0 < len(fresh) < len(whole) and len(stopped.cache._entries) == len(fresh)
    assert ViewRenderer(volume, renderer.norm, rec).encode(grid, cancelled=lambda: True) == []


def test_a_render_stops_between_encoder_batches(renderer, volume, monkeypatch):
    """An xy view's plane batch is tens of slices, encoded in several encoder batches: a newer
    view (a slider step) waited for all of them, 1.2-2.1 s in the live-view audit. The render now
    stops after the encoder batch during which it was cancelled, and what it encoded stays cached."""
    from napari_niiv.inference import views

    monkeypatch.setattr(views, "ENCODE_VALUES", 1)  # one slice per encoder batch
    grid = view_grid(Camera((24.0, 28.0), 6.0, (300, 340)), frame_of(volume), (1, 2), 13.0, finest=0.1)
    rec = Reconstructor(renderer.rec.model, renderer.rec.settings, slice_batch=8)
    view = ViewRenderer(volume, renderer.norm, rec)
    encoded = []  # encoder batches finished
    encode = rec.engine.encode_until
    monkeypatch.setattr(rec.engine, "encode_until", lambda *a, **k: (encode(*a, **k), encoded.append(1))[0])
    assert view.render(grid, cancelled=lambda: len(encoded) >= 1) is None
    assert len(encoded) == 1 and len(view.cache._entries) == 1


def test_an_xy_view_encodes_only_the_rows_within_its_halo(medulla):
    """An xy view keeps only the latent rows around its z, so its slices are encoded over the
    halo's rows, not a crop rounded out to the row lattice (which no other z could reuse), and
    still equal the core's decoding of whole slices."""
    from napari_niiv.data.degrade import pool_axis
    from napari_niiv.inference.geometry import pixel_range
    from tests.conftest import TINY

    tall = pool_axis(medulla[:, :40, :40].astype(np.float32), ALPHA, 0).astype(np.uint8)  # 16 rows
    settings = InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu")
    rec = Reconstructor(random_model(TINY), settings, slice_batch=4)
    r = ViewRenderer(tall, fit_normalisation(tall), rec)
    frame = Frame(tall.shape, (ALPHA, 1.0, 1.0))
    grid = view_grid(Camera((20.0, 20.0), 1.0, (40, 40)), frame, (1, 2), 30.0, finest=1.0)
    z = grid.coords[0]
    need = pixel_range(z, tall.shape[0], rec.halo)
    assert grid.kind == "xy" and need[0] > 0 and need[1] < tall.shape[0]  # the halo is inside the volume
    out = r.render(grid)
    entries = list(r.cache._entries.values())
    assert entries and all(e.rows == need for e in entries)
    norm = r.norm.apply(tall)
    planes = np.moveaxis(interpolate_planes(norm, grid.coords[1], 1, 0), 1, 0)
    whole = Reconstructor(rec.model, settings, tile=10_000).planes(planes, z, grid.coords[2])
    np.testing.assert_allclose(out, np.moveaxis(whole, (0, 1, 2), (1, 0, 2)), atol=2e-5)


def test_zoom_in_reuses_latents(volume):
    rec = Reconstructor(random_model(), InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu"))
    r = ViewRenderer(volume, fit_normalisation(volume), rec)
    frame = frame_of(volume)
    r.render(view_grid(Camera((24.0, 28.0), 1.0, (100, 100)), frame, (0, 2), 20.0, finest=0.5))
    misses = r.cache.misses
    zoomed = view_grid(Camera((20.0, 25.0), 3.0, (100, 100)), frame, (0, 2), 20.0, finest=0.25)
    out = r.render(zoomed)
    assert r.cache.misses == misses and r.cache.hits >= 1  # decoder only
    np.testing.assert_allclose(out, reference(r, volume, zoomed, "xz"), atol=2e-5)
    r.render(view_grid(Camera((20.0, 25.0), 3.0, (100, 100)), frame, (0, 2), 30.0, finest=0.25))
    assert r.cache.misses == misses + 1  # another slice is encoded


def test_cancelled_render_returns_none_and_partial_results_stream(renderer, volume):
    grid = view_grid(Camera((24.0, 28.0), 1.0, (100, 100)), frame_of(volume), (1, 2), 13.0, finest=1.0)
    assert renderer.render(grid, cancelled=lambda: True) is None
    calls = []
    renderer.render(grid, partial=calls.append)  # fast here: maybe no partials, never an error
    assert all(c.shape == grid.shape for c in calls)


def test_progressive_render_shows_a_quarter_resolution_niiv_first(renderer, volume):
    grid = view_grid(Camera((24.0, 28.0), 6.0, (300, 340)), frame_of(volume), (0, 2), 20.0, finest=0.1)
    assert grid.shape[0] * grid.shape[2] > COARSE_MIN_PIXELS
    events = []
    out = renderer.render(
        grid,
        coarse=lambda image: events.append(("coarse", image)),
        partial=lambda image: events.append(("partial", image)),
    )
    assert events[0][0] == "coarse" and [e for e, _ in events].count("coarse") == 1
    small = coarse_grid(grid, 4)
    assert small.shape == (-(-(grid.shape[0] - 2) // 4), 1, -(-(grid.shape[2] - 2) // 4))
    first = events[0][1]
    np.testing.assert_allclose(first, upsample(renderer.render(small), small, grid), atol=1e-6)
    # a better start than the preview, and the final image is the same as without the coarse pass
    truth = renderer.render(grid)
    assert np.abs(first - truth).mean() < np.abs(renderer.preview(grid) - truth).mean()
    np.testing.assert_allclose(out, truth, atol=2e-5)
    # small views go straight to full resolution
    few = view_grid(Camera((24.0, 28.0), 1.0, (60, 50)), frame_of(volume), (0, 2), 20.0, finest=0.5)
    renderer.render(few, coarse=lambda image: pytest.fail("no coarse pass for a small view"))


def test_prefetched_latents_equal_fresh_ones_and_the_step_only_decodes(volume):
    """After a view, prefetch encodes the neighbouring planes along the sliced axis; their cached
    latents are bit-identical to those a fresh renderer computes for the next plane, and stepping
    there decodes from them (no encoder run) to the same image."""
    rec = Reconstructor(random_model(), InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu"))
    norm = fit_normalisation(volume)
    frame = frame_of(volume)
    grid = view_grid(Camera((24.0, 28.0), 1.0, (100, 100)), frame, (0, 2), 20.0, finest=0.5)
    step = view_grid(Camera((24.0, 28.0), 1.0, (100, 100)), frame, (0, 2), 21.0, finest=0.5)
    r = ViewRenderer(volume, norm, rec)
    r.render(grid)
    assert r.prefetch(grid, 1.0, planes=2) == 4  # y 19, 21, 18, 22
    misses = r.cache.misses
    out = r.render(step)
    assert r.cache.misses == misses  # decoder only
    fresh = ViewRenderer(volume, norm, rec)
    np.testing.assert_array_equal(out, fresh.render(step))
    key = ("xz", round(float(step.coords[1][0]), 6))
    mine, theirs = r.cache._entries[key], fresh.cache._entries[key]
    assert (mine.rows, mine.cols) == (theirs.rows, theirs.cols)
    np.testing.assert_array_equal(mine.grid.latents.numpy(), theirs.grid.latents.numpy())


def test_prefetch_stops_when_cancelled_or_over_its_budget(volume):
    rec = Reconstructor(random_model(), InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu"))
    r = ViewRenderer(volume, fit_normalisation(volume), rec)
    grid = view_grid(Camera((24.0, 28.0), 1.0, (100, 100)), frame_of(volume), (0, 2), 20.0, finest=0.5)
    r.render(grid)
    assert r.prefetch(grid, 1.0, cancelled=lambda: True) == 0
    one = next(iter(r.cache._entries.values())).nbytes
    before = r.cache.nbytes
    assert r.prefetch(grid, 1.0, planes=4, budget_bytes=int(2.5 * one)) == 2  # a third would pass it
    assert r.cache.nbytes == before + 2 * one
    xy = view_grid(Camera((24.0, 28.0), 1.0, (100, 100)), frame_of(volume), (1, 2), 13.0, finest=1.0)
    assert r.prefetch(xy, 1.0) == 0  # along z every slice's crop changes: not prefetched


@pytest.fixture
def lazy(volume):
    from napari_niiv.inference.geometry import output_geometry
    from napari_niiv.inference.lazy_volume import LazyIsotropic

    settings = InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu")
    rec = Reconstructor(random_model(), settings)
    out = LazyIsotropic(volume, fit_normalisation(volume), rec, output_geometry(volume.shape, ALPHA))
    yield out
    out.close()


def test_lazy_layer_computes_the_tiles_of_the_two_latest_requests(lazy):
    """Planes asked for while the worker is busy: only the two latest (the view and the thumbnail)
    are computed, newest first; the tile then replaces the interpolation in what get returns."""
    done = []
    lazy.on_tile = done.append
    lazy.prefetch_3d = False  # the 3D overview rendered ahead when idle is tested on its own
    gate, started = threading.Event(), threading.Event()

    def busy(cancelled):
        started.set()
        return gate.wait(120)

    lazy._worker.submit(busy)  # busy until released below, so the requests queue
    # a get submitted before the worker picks the gate up would supersede it and run at once
    assert started.wait(30)
    region = (slice(0, 48), slice(0, 56))
    before = {z: lazy.get(0, (slice(z, z + 1), *region)) for z in (5, 6, 7)}
    assert lazy.pending == 2  # z 6 and 7: z 5's request is no longer among the latest two
    gate.set()
    assert lazy._worker.wait_idle(60)
    assert done == [(0, 0, 7, 0, 0), (0, 0, 6, 0, 0)] and lazy.pending == 0
    tile = lazy.compute_tile((0, 0, 7, 0, 0))
    np.testing.assert_array_equal(lazy.get(0, (slice(7, 8), *region)), tile)
    assert np.abs(before[7] - tile).mean() > 0  # the first answer was the interpolation
    submitted = lazy._worker._generation
    lazy.get(0, (slice(6, 7), *region))
    assert lazy._worker._generation == submitted  # cached planes queue nothing


def test_closing_the_lazy_layer_stops_its_worker(lazy):
    lazy.get(0, (slice(3, 4), slice(0, 48), slice(0, 56)))
    t0 = time.perf_counter()
    lazy.close()
    assert lazy._worker.stopped and time.perf_counter() - t0 < 5
    lazy.get(0, (slice(9, 10), slice(0, 48), slice(0, 56)))  # still answers, with interpolation
    assert not lazy._worker.busy


def test_a_volume_with_nan_gets_an_interpolated_view_and_one_error_not_one_per_tile(volume):
    """NaN in a float input: napari's reads of the layer answer (interpolation carries the NaN, as
    napari shows the input itself), and the tiles niiv cannot compute are reported once."""
    from napari_niiv.inference.geometry import output_geometry
    from napari_niiv.inference.lazy_volume import LazyIsotropic

    holed = volume.astype(np.float32)
    norm = fit_normalisation(holed)
    holed[:, 10:14, 20:24] = np.nan  # a gap left by registration, through every plane
    settings = InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu")
    lazy = LazyIsotropic(holed, norm, Reconstructor(random_model(), settings), output_geometry(holed.shape, ALPHA))
    lazy.prefetch_3d = False
    errors: list[BaseException] = []
    lazy.on_error = errors.append
    try:
        for z in (5, 6, 7):
            plane = lazy.get(0, (slice(z, z + 1), slice(0, 48), slice(0, 56)))
            assert np.isnan(plane[0, 11, 21]) and np.isfinite(plane[0, 30:, 30:]).all()
            assert lazy._worker.wait_idle(60)
        assert lazy.pending == 0
    finally:
        lazy.close()
    assert len(errors) == 1 and "NaN" in str(errors[0])


@pytest.mark.slow
def test_saving_the_lazy_layer_keeps_its_precision(volume, tmp_path):
    """The lazy layer's File > Save reconstructs with the layer's own settings, fp32 here, not the default."""
    from napari_niiv.data import open_volume
    from napari_niiv.inference.geometry import output_geometry
    from napari_niiv.inference.lazy_volume import LazyIsotropic
    from napari_niiv.inference.reconstructor import reconstruct_volume

    model = random_model()
    settings = InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu")
    geometry = output_geometry(volume.shape, ALPHA)
    lazy = LazyIsotropic(volume, fit_normalisation(volume), Reconstructor(model, settings), geometry)
    try:
        lazy.write_ome_zarr(str(tmp_path / "iso.ome.zarr"))
    finally:
        lazy.close()
    saved = open_volume(tmp_path / "iso.ome.zarr").data.compute()
    expect = reconstruct_volume(model, volume, InferenceSettings(alpha=ALPHA, precision="fp32"))
    np.testing.assert_allclose(saved, expect, rtol=0, atol=2e-5)


def test_a_3d_read_answers_at_once_with_the_nearest_voxels_then_the_fast_models_render(volume):
    """napari's 3D view reads a whole level: the first read is the nearest input voxels (no model,
    no interpolation of the whole level on the GUI thread) and queues the level's render with the
    fast model; once made, reads return it, equal to the fast model's rendering of that level."""
    from napari_niiv.inference.geometry import output_geometry
    from napari_niiv.inference.lazy_volume import LazyIsotropic
    from napari_niiv.model import NiivConfig

    settings = InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu")
    fast = Reconstructor(
        random_model(NiivConfig(latent_dim=8, encoder_blocks=1, attention=False, mlp_hidden=16, mlp_layers=2)), settings
    )
    full = Reconstructor(random_model(), settings)
    lazy = LazyIsotropic(volume, fit_normalisation(volume), full, output_geometry(volume.shape, ALPHA), fast=fast)
    made = []
    lazy.on_tile = made.append
    try:
        level = len(lazy.shapes) - 1
        index = tuple(slice(0, n) for n in lazy.shapes[level])
        # a 2D plane asked for first: the 3D read supersedes it, so it no longer counts as to go
        # (the dock's bar said "tiles ... to go" in 3D while nothing computed them)
        lazy._worker.submit(lambda cancelled: time.sleep(0.5) or 0)  # busy: the plane's tiles wait
        lazy.get(0, (slice(0, 1), slice(0, lazy.shapes[0][1]), slice(0, lazy.shapes[0][2])))
        assert lazy.pending > 0
        first = lazy.get(level, index)
        assert lazy.pending == 1  # the 3D render alone
        coords = lazy.coords(level, index)
        picks = [np.clip(np.floor(c).astype(int), 0, n - 1) for c, n in zip(coords, volume.shape, strict=True)]
        np.testing.assert_array_equal(first, volume[np.ix_(*picks)].astype(np.float32))
        assert lazy._worker.wait_idle(60) and made == [(level, 3, 0, 0, 0)] and lazy.pending == 0
        rendered = lazy.get(level, index)
        grid = ViewGrid(coords, 1, 0.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        expect = lazy.norm.invert(ViewRenderer(volume, lazy.norm, fast).render(grid), np.float32)
        np.testing.assert_allclose(rendered, expect, atol=1e-5)
        assert np.abs(rendered - first).mean() > 0
        generation = lazy._worker._generation
        lazy.get(level, index)
        assert lazy._worker._generation == generation  # made once: nothing queued again
        assert np.isnan(lazy.get(level, index, "confidence")).all()  # no maps in 3D
    finally:
        lazy.close()


def test_a_3d_read_of_a_large_lazy_input_reads_none_of_it_on_the_calling_thread(volume, monkeypatch):
    """The nearest voxels of a whole level lie in every chunk of the input: for a large lazy input
    (a big or remote store) the first 3D answer is empty (NaN), and only the worker reads."""

    from napari_niiv.inference import lazy_volume
    from napari_niiv.inference.geometry import output_geometry
    from napari_niiv.inference.lazy_volume import LazyIsotropic

    lazy_input, readers = read_noting(volume, (4, 16, 16))
    monkeypatch.setattr(lazy_volume, "NEAREST_BYTES", volume.nbytes - 1)  # this one counts as large
    settings = InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu")
    rec, geometry = Reconstructor(random_model(), settings), output_geometry(volume.shape, ALPHA)
    lazy = LazyIsotropic(lazy_input, fit_normalisation(volume), rec, geometry)
    try:
        level = len(lazy.shapes) - 1
        index = tuple(slice(0, n) for n in lazy.shapes[level])
        gate, started = threading.Event(), threading.Event()
        lazy._worker.submit(lambda cancelled: started.set() or gate.wait(60))  # the worker is busy
        assert started.wait(30)
        readers.clear()  # what setting up the layer read
        assert np.isnan(lazy.get(level, index)).all() and readers == []  # get read nothing
        gate.set()
        assert lazy._worker.wait_idle(60) and readers  # the worker read it and rendered the level
        assert np.isfinite(lazy.get(level, index)).all()
        monkeypatch.setattr(lazy_volume, "NEAREST_BYTES", volume.nbytes)  # small: nearest voxels at once
        lazy._nearest.clear()
        lazy._volumes.clear()
        lazy._volume_wanted = None
        assert np.isfinite(lazy.get(level, index)).all()
    finally:
        lazy.close()


def test_a_plane_read_of_a_lazy_input_reads_its_stand_ins_on_a_thread(volume, monkeypatch):
    """A lazy input (one over the in-memory size, e.g. a large store) is read through dask for
    every stand-in: 0.4-1.7 s of napari's thread per slider step. A plane read now reads none of it:
    NaN where no tile is made, the stand-ins made on their own thread, each followed by
    ``on_preview`` (a redraw), after which the same read shows them, as interpolation."""
    import dask

    from napari_niiv.inference import lazy_volume
    from napari_niiv.inference.geometry import output_geometry
    from napari_niiv.inference.lazy_volume import LazyIsotropic

    monkeypatch.setattr(lazy_volume, "TILE", 16)
    lazy_input, readers = read_noting(volume, (4, 16, 16))
    settings = InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu")
    rec, geometry = Reconstructor(random_model(), settings), output_geometry(volume.shape, ALPHA)
    lazy = LazyIsotropic(lazy_input, fit_normalisation(volume), rec, geometry)
    previewed: list[tuple] = []
    lazy.on_preview = previewed.append
    try:
        gate, started = threading.Event(), threading.Event()
        lazy._worker.submit(lambda cancelled: started.set() or gate.wait(60))  # no tiles meanwhile
        assert started.wait(30)
        index = (slice(0, 40), slice(5, 6), slice(0, 40))
        readers.clear()
        with dask.config.set(scheduler="synchronous"):  # chunks are read on the thread that asks
            first = lazy.get(0, index)
            assert np.isnan(first).all() and "MainThread" not in readers
            assert lazy._preview_worker.wait_idle(60)
        assert sorted(previewed) == sorted((0, 1, 5, r, c) for r in range(3) for c in range(3))
        assert readers and "MainThread" not in readers
        generation = lazy._preview_worker._generation
        readers.clear()
        shown = lazy.get(0, index)
        assert "MainThread" not in readers and lazy._preview_worker._generation == generation  # none asked again
        np.testing.assert_allclose(shown, lazy._interpolated(0, index), atol=1e-5)
        gate.set()
    finally:
        lazy.close()


def test_a_lazy_inputs_stand_ins_all_arrive_when_a_view_needs_more_than_are_kept(volume, monkeypatch):
    """A 4K view needed 144 stand-ins where 128 are kept: the first ones made were evicted by the
    last, and never asked for again (still counted as asked), so 12 % of the screen stayed empty
    (the review of this change). A view's own stand-ins are now kept, and keys a task did not make
    are asked again."""
    from napari_niiv.inference import lazy_volume
    from napari_niiv.inference.geometry import output_geometry
    from napari_niiv.inference.lazy_volume import LazyIsotropic

    monkeypatch.setattr(lazy_volume, "TILE", 16)
    monkeypatch.setattr(lazy_volume, "PREVIEWS_KEPT", 2)  # a view of 9 tiles needs more
    lazy_input, _ = read_noting(volume, (4, 16, 16))
    settings = InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu")
    rec, geometry = Reconstructor(random_model(), settings), output_geometry(volume.shape, ALPHA)
    lazy = LazyIsotropic(lazy_input, fit_normalisation(volume), rec, geometry)
    try:
        gate, started = threading.Event(), threading.Event()
        lazy._worker.submit(lambda cancelled: started.set() or gate.wait(60))  # no niiv tiles meanwhile
        assert started.wait(30)
        index = (slice(0, 40), slice(5, 6), slice(0, 40))
        lazy.get(0, index)
        assert lazy._preview_worker.wait_idle(60)
        np.testing.assert_allclose(lazy.get(0, index), lazy._interpolated(0, index), atol=1e-5)
        lazy._previews_asked = {(0, 1, 5, 0, 0), (0, 1, 5, 0, 1)}  # a newer request's, being made
        lazy._make_previews([(0, 1, 5, 0, 0)], lambda: True, {(0, 1, 5, 0, 0)})  # an older, overlapping one ends
        assert lazy._previews_asked == {(0, 1, 5, 0, 0), (0, 1, 5, 0, 1)}  # not released: no needless restart
        lazy._previews_asked = set()
        lazy._previews.clear()  # as if evicted, or a read had failed: asked again by the next read
        lazy.get(0, index)
        assert lazy._preview_worker.wait_idle(60)
        assert np.isfinite(lazy.get(0, index)).all()
        gate.set()
    finally:
        lazy.close()


def test_a_plane_read_interpolates_only_where_no_tile_is_made_and_once(lazy, monkeypatch):
    """A 2D read pastes the cached tiles and interpolates the rest, tile by tile: the same image as
    interpolating the whole view and pasting over it, without interpolating under the tiles; the
    next read (a redraw as a tile arrives) interpolates nothing again, and a tile once made
    replaces its stand-in."""
    from napari_niiv.inference import lazy_volume

    monkeypatch.setattr(lazy_volume, "TILE", 16)  # 3 x 4 tiles in one xz plane
    lazy.prefetch_3d = False
    index = (slice(0, 48), slice(5, 6), slice(3, 56))
    key = (0, 1, 5, 1, 2)  # rows 16-32, columns 32-48
    lazy._tiles[key] = tile = lazy.compute_tile(key)
    asked = []
    interpolate = lazy._interpolated
    monkeypatch.setattr(lazy, "_interpolated", lambda level, part: asked.append(part) or interpolate(level, part))
    out = lazy.get(0, index)
    expect = interpolate(0, index)
    expect[16:32, :, 29:45] = tile
    np.testing.assert_allclose(out, expect, atol=1e-6)
    assert len(asked) == 11 and (slice(16, 32), slice(5, 6), slice(32, 48)) not in asked
    assert (slice(0, 16), slice(5, 6), slice(0, 16)) in asked  # whole tiles, kept for the next read
    asked.clear()
    np.testing.assert_array_equal(lazy.get(0, index), out)
    assert asked == []
    assert lazy._worker.wait_idle(60)
    made = lazy._tiles[(0, 1, 5, 0, 0)]  # the worker made the missing tiles meanwhile
    np.testing.assert_array_equal(lazy.get(0, index)[:16, :, :13], made[:, :, 3:])
    assert (0, 1, 5, 0, 0) not in lazy._previews


def test_when_the_tiles_asked_for_are_done_the_3d_overview_is_rendered_ahead(volume):
    """Idle after a 2D read, the layer renders its 3D overview (the whole coarsest level, what
    napari's 3D view reads) so that the switch to 3D shows niiv at once; with ``prefetch_3d`` off,
    or on a CPU without niiv-fast (the full model's overview costs as much as a view), nothing is
    rendered ahead."""
    from napari_niiv.inference.geometry import output_geometry
    from napari_niiv.inference.lazy_volume import LazyIsotropic
    from napari_niiv.model import NiivConfig

    settings = InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu")
    tiny = NiivConfig(latent_dim=8, encoder_blocks=1, attention=False, mlp_hidden=16, mlp_layers=2)
    for prefetch, with_fast in ((True, True), (False, True), (True, False)):
        ahead = prefetch and with_fast
        lazy = LazyIsotropic(
            volume,
            fit_normalisation(volume),
            Reconstructor(random_model(tiny, seed=1), settings),
            output_geometry(volume.shape, ALPHA),
            fast=Reconstructor(random_model(tiny), settings) if with_fast else None,
        )
        lazy.prefetch_3d = prefetch
        made = []
        lazy.on_tile = made.append
        try:
            level, bounds = lazy.overview_key()
            index = tuple(slice(a, b) for a, b in bounds)
            assert bounds == tuple((0, n) for n in lazy.shapes[-1])
            lazy.get(0, (slice(0, lazy.shapes[0][0]), slice(3, 4), slice(0, lazy.shapes[0][2])))  # a 2D view
            assert lazy._worker.wait_idle(60) and lazy.pending == 0
            assert ((level, 3, 0, 0, 0) in made) is ahead and bool(lazy._volumes) is ahead
            if ahead:  # the 3D read returns the render at once, the fast model's, and queues nothing
                generation = lazy._worker._generation
                grid = ViewGrid(lazy.coords(level, index), 1, 0.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
                expect = lazy.norm.invert(
                    ViewRenderer(volume, lazy.norm, lazy.fast_renderer.rec).render(grid), np.float32
                )
                np.testing.assert_allclose(lazy.get(level, index), expect, atol=1e-5)
                assert lazy._worker._generation == generation
        finally:
            lazy.close()


def _lazy_of(volume, monkeypatch):
    """A lazy layer of the small volume with 16^2 tiles: an xz plane of it is one row of 4 tiles
    (the last 8 wide), 4 at a time."""
    from napari_niiv.inference import lazy_volume
    from napari_niiv.inference.geometry import output_geometry

    monkeypatch.setattr(lazy_volume, "TILE", 16)
    monkeypatch.setattr(lazy_volume, "ROW_TILES", 4)
    settings = InferenceSettings(precision="fp32", alpha=ALPHA, device="cpu")
    rec = Reconstructor(random_model(), settings)
    lazy = lazy_volume.LazyIsotropic(volume, fit_normalisation(volume), rec, output_geometry(volume.shape, ALPHA))
    lazy.prefetch_3d = False
    return lazy


def _recorded_renders(lazy) -> list[tuple[int, ...]]:
    """The grid shape of every region the layer's renderer is asked for from now on."""
    shapes: list[tuple[int, ...]] = []
    render = lazy.renderer.render

    def recorded(grid, *args, **kwargs):
        shapes.append(tuple(len(c) for c in grid.coords))
        return render(grid, *args, **kwargs)

    lazy.renderer.render = recorded
    return shapes


def test_tiles_of_one_plane_share_their_encoding_and_equal_tiles_made_alone(volume, monkeypatch):
    """The missing tiles of one plane are encoded together over the union of their crops (one
    encoder pass instead of one per tile) and decoded up to ROW_TILES neighbours of a row at a
    time (rows of 4 tiles with 3 at a time: 3 + 1); each tile equals the same tile computed on
    its own."""
    from napari_niiv.inference import lazy_volume

    together, alone = _lazy_of(volume, monkeypatch), _lazy_of(volume, monkeypatch)  # the same weights
    monkeypatch.setattr(lazy_volume, "ROW_TILES", 3)  # a row of 4 tiles in two decodings
    decoded = _recorded_renders(together)
    try:
        index = (slice(0, 48), slice(20, 21), slice(0, 56))  # an xz plane: 3 x 4 tiles
        together.get(0, index)
        assert together._worker.wait_idle(60) and together.pending == 0
        keys = list(together._tiles)
        assert len(keys) == 12 and together.renderer.cache.misses == 1  # one encoder pass for the plane
        widths = sorted(shape[2] for shape in decoded)
        assert len(decoded) == 6 and all(shape[0] == 16 for shape in decoded), decoded
        last = together.shapes[0][2] - 48  # the last tile of a row is cut by the volume's edge
        assert widths == sorted([48, last] * 3), decoded
        for key in keys:
            np.testing.assert_allclose(together._tiles[key], alone.compute_tile(key), atol=1e-4)
    finally:
        together.close()
        alone.close()


def test_a_tile_that_fails_costs_only_itself_not_its_row(volume, monkeypatch):
    """A row whose decoding fails (an unreadable chunk under one of its tiles) is made again tile
    by tile: its healthy tiles are made, the bad one is reported once and left interpolated."""
    lazy = _lazy_of(volume, monkeypatch)
    errors: list[BaseException] = []
    lazy.on_error = errors.append
    render = lazy.renderer.render

    def unreadable_right_edge(grid, *args, **kwargs):
        if grid.coords[2].max() > 48:  # the last tile's columns
            raise OSError("unreadable chunk")
        return render(grid, *args, **kwargs)

    lazy.renderer.render = unreadable_right_edge
    try:
        lazy.get(0, (slice(0, 16), slice(20, 21), slice(0, 56)))
        assert lazy._worker.wait_idle(60) and lazy.pending == 0
        assert sorted(k[4] for k in lazy._tiles) == [0, 1, 2]
        assert len(errors) == 1 and isinstance(errors[0], OSError)
    finally:
        lazy.close()


def test_a_row_skips_tiles_already_made(volume, monkeypatch):
    """Rows are made of missing neighbours only: a tile already made splits the row around it."""
    lazy = _lazy_of(volume, monkeypatch)
    try:
        made = (0, 1, 20, 0, 1)
        lazy._tiles[made] = lazy.compute_tile(made)
        decoded = _recorded_renders(lazy)
        lazy.get(0, (slice(0, 16), slice(20, 21), slice(0, 56)))
        assert lazy._worker.wait_idle(60) and lazy.pending == 0
        assert sorted(shape[2] for shape in decoded) == [16, 24] and len(lazy._tiles) == 4
    finally:
        lazy.close()


@pytest.mark.parametrize("user", ["scrolls on", "pans"])
def test_a_row_gives_way_to_requests_that_no_longer_want_it(volume, monkeypatch, user):
    """While a row is being made the user asks for more: two other planes (scrolling on), and the
    row is given up for them; or the same tiles again (a pan), and the row is finished."""
    lazy = _lazy_of(volume, monkeypatch)
    render = lazy.renderer.render
    first: list[np.ndarray | None] = []

    def meanwhile(grid, *args, **kwargs):
        if not first:
            if user == "scrolls on":
                lazy.get(0, (slice(0, 16), slice(30, 31), slice(0, 56)))
                lazy.get(0, (slice(0, 16), slice(31, 32), slice(0, 56)))
            else:
                lazy.get(0, (slice(0, 16), slice(20, 21), slice(8, 56)))
        result = render(grid, *args, **kwargs)
        if not first:
            first.append(result)
        return result

    lazy.renderer.render = meanwhile
    try:
        lazy.get(0, (slice(0, 16), slice(20, 21), slice(0, 56)))
        assert lazy._worker.wait_idle(60) and lazy.pending == 0
        planes = sorted({k[2] for k in lazy._tiles})
        if user == "scrolls on":
            assert first[0] is None and planes == [30, 31] and len(lazy._tiles) == 8
        else:
            assert first[0] is not None and planes == [20] and len(lazy._tiles) == 4
    finally:
        lazy.close()


def test_the_latent_cache_counts_its_bytes_through_replacements_and_evictions():
    """The cache keeps a running total: replacing a plane's entry counts only the new one, the
    least recently used go first past the budget, and the total is always the entries' sum."""
    import torch

    from napari_niiv.inference.views import LatentCache, _Entry

    model = random_model()
    with torch.inference_mode():
        grids = [model.encode(torch.rand(1, 1, 4, w), 8.0) for w in (8, 16, 8)]
    size = [_Entry((0, 4), (0, g.image.shape[-1]), g).nbytes for g in grids]
    cache = LatentCache(max_bytes=size[0] + size[1])
    cache.put(("xz", 0.0), _Entry((0, 4), (0, 8), grids[0]))
    cache.put(("xz", 1.0), _Entry((0, 4), (0, 16), grids[1]))
    assert cache.nbytes == size[0] + size[1]
    cache.put(("xz", 0.0), _Entry((0, 4), (0, 8), grids[2]))  # replaced, not added
    assert cache.nbytes == size[2] + size[1]
    assert cache.get(("xz", 1.0), (0, 4), (0, 16)) is not None  # plane 1 now the most recent
    cache.put(("xz", 2.0), _Entry((0, 4), (0, 8), grids[0]))  # over budget: plane 0 goes
    assert cache.get(("xz", 0.0), (0, 4), (0, 8)) is None
    assert cache.nbytes == size[1] + size[0] == sum(e.nbytes for e in cache._entries.values())
    cache.clear()
    assert cache.nbytes == 0
