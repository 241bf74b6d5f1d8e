import dask.array as da
import numpy as np
import pytest
import zarr

from napari_niiv.data import (
    LateralPairSampler,
    Normalisation,
    Volume,
    as_volume,
    fit_normalisation,
    open_volume,
    pool_axis,
    pooling_matrix,
)
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.store import ArrayBlocks, Layout, write_ome_zarr

from .conftest import data_path, write_tif


def test_integer_pooling_is_average_pooling() -> None:
    x = np.random.default_rng(0).random((24, 5))
    np.testing.assert_allclose(pool_axis(x, 8, axis=0), x.reshape(3, 8, 5).mean(1), atol=1e-6)


def test_fractional_pooling_is_a_box_of_width_alpha() -> None:
    m = pooling_matrix(11, 5.5)
    assert m.shape == (2, 11)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(m[0, :6], [1 / 5.5] * 5 + [0.5 / 5.5], atol=1e-6)
    np.testing.assert_allclose(m[1, 5:], [0.5 / 5.5] + [1 / 5.5] * 5, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 0.0, -2.0, float("nan")])
def test_bad_alpha(alpha: float) -> None:
    with pytest.raises(NiivInputError, match="alpha must be a number from 1 to 100"):
        pooling_matrix(16, alpha)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_normalisation_round_trip(dtype) -> None:
    rng = np.random.default_rng(0)
    raw = (rng.random((8, 32, 32)) * (200 if dtype == np.uint8 else 3000)).astype(dtype)
    norm = fit_normalisation(raw)
    y = norm.apply(raw)
    assert y.min() >= 0 and y.max() <= 1 and y.dtype == np.float32
    back = norm.invert(y, dtype)
    inside = (raw >= norm.low) & (raw <= norm.high)
    tol = 1 if np.dtype(dtype).kind in "ui" else 1e-3
    assert np.abs(back.astype(np.float64) - raw)[inside].max() <= tol
    assert Normalisation.from_dict(norm.to_dict()) == norm


def test_nan_volume_is_rejected() -> None:
    vol = np.ones((4, 32, 32), dtype=np.float32)
    vol[1, 2, 3] = np.nan
    with pytest.raises(NiivInputError, match="NaN"):
        fit_normalisation(vol)


def test_an_inf_the_normalisations_sample_missed_is_refused_like_a_nan() -> None:
    """Clipped by the normalisation, an inf passed as the brightest voxel and was reconstructed."""
    from napari_niiv.inference.reconstructor import reconstruct_volume
    from napari_niiv.inference.settings import InferenceSettings
    from tests.conftest import random_model

    rng = np.random.default_rng(0)
    vol = rng.random((8, 600, 600)).astype(np.float32)
    vol[1, 1, 1] = np.inf
    fit_normalisation(vol)  # the strided sample (every other voxel) does not see it
    with pytest.raises(NiivInputError, match="NaN or infinite"):
        reconstruct_volume(
            random_model(),
            vol,
            InferenceSettings(alpha=4, device="cpu"),
            region=(slice(0, 8), slice(0, 40), slice(0, 40)),
        )


@pytest.mark.parametrize(
    ("shape", "message"), [((32, 32), "3D"), ((4, 32, 32, 3), "RGB"), ((2, 4, 32, 32), "3D"), ((5,), "3D")]
)
def test_wrong_dimensionality_is_rejected(shape, message) -> None:
    with pytest.raises(NiivInputError, match=message):
        as_volume(np.zeros(shape, dtype=np.uint8))


def test_open_real_tiff_lazily() -> None:
    vol = open_volume(data_path("fibsem", "medulla_a.tif"))
    assert isinstance(vol.data, da.Array) and vol.shape == (250, 250, 250)
    assert vol.voxel_size[0] == pytest.approx(vol.voxel_size[2])
    assert vol.data.npartitions > 1  # chunked: nothing read until asked


def test_tiff_voxel_size_from_imagej_metadata(tmp_path) -> None:
    p = tmp_path / "v.tif"
    write_tif(
        p,
        np.zeros((4, 16, 16), np.uint8),
        imagej=True,
        resolution=(1 / 4, 1 / 4),
        metadata={"spacing": 40, "axes": "ZYX"},
    )
    vol = open_volume(p)
    assert vol.voxel_size == pytest.approx((40, 4, 4)) and vol.alpha == pytest.approx(10)
    assert vol.unit is None  # no unit given
    write_tif(
        p,
        np.zeros((4, 16, 16), np.uint8),
        imagej=True,
        resolution=(1 / 4, 1 / 4),
        metadata={"spacing": 40, "unit": "nm", "axes": "ZYX"},
    )
    assert open_volume(p).unit == "nanometer"


def test_open_npy_zarr_and_ome_zarr(tmp_path) -> None:
    arr = np.arange(4 * 20 * 24, dtype=np.uint16).reshape(4, 20, 24)
    np.save(tmp_path / "v.npy", arr)
    np.testing.assert_array_equal(open_volume(tmp_path / "v.npy").data.compute(), arr)
    z = zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=arr.shape, chunks=(2, 10, 10), dtype=arr.dtype)
    z[:] = arr
    np.testing.assert_array_equal(open_volume(tmp_path / "v.zarr").data.compute(), arr)
    layout = Layout(arr.shape, arr.dtype, voxel_size=(40.0, 4.0, 4.0), unit="nanometer")
    write_ome_zarr(tmp_path / "o.ome.zarr", layout, ArrayBlocks(arr))
    vol = open_volume(tmp_path / "o.ome.zarr")
    np.testing.assert_array_equal(vol.data.compute(), arr)
    assert vol.voxel_size == pytest.approx((40, 4, 4)) and vol.unit == "nanometer"


def test_unreadable_files(tmp_path) -> None:
    with pytest.raises(NiivInputError, match="no such file"):
        open_volume(tmp_path / "missing.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"this is not a tiff")
    with pytest.raises(NiivInputError, match="could not read"):
        open_volume(bad)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(NiivInputError, match="unknown format"):
        open_volume(other)


def test_pairs_are_pooled_crops_and_deterministic(medulla) -> None:
    sampler = LateralPairSampler([Volume(da.from_array(medulla))], alpha=4.0, crop=32, points=256)
    a, b = sampler.batch(7, 3, 4), sampler.batch(7, 3, 4)
    assert a.inputs.shape == (4, 1, 8, 32) and a.coords.shape == (4, 256, 2) and a.targets.shape == (4, 256)
    np.testing.assert_array_equal(a.targets.numpy(), b.targets.numpy())
    assert not np.array_equal(a.targets.numpy(), sampler.batch(7, 4, 4).targets.numpy())
    # Inputs are the crops pooled along rows; targets are crop pixels at the query coordinates.
    crops = sampler.crops(np.random.default_rng([7, 3]), 4)
    np.testing.assert_allclose(crops.reshape(4, 8, 4, 32).mean(2), a.inputs[:, 0].numpy(), atol=1e-5)
    rows = (a.coords[..., 0] * 4 - 0.5).round().long().numpy()
    cols = (a.coords[..., 1] - 0.5).round().long().numpy()
    np.testing.assert_allclose(a.coords[..., 0].numpy(), (rows + 0.5) / 4, atol=1e-6)
    picked = np.stack([crops[i, rows[i], cols[i]] for i in range(4)])
    np.testing.assert_array_equal(picked, a.targets.numpy())


def test_volume_smaller_than_crop_is_rejected(medulla) -> None:
    with pytest.raises(NiivInputError, match="smaller than the training crop"):
        LateralPairSampler([Volume(da.from_array(medulla[:, :20, :20]))], alpha=4.0, crop=32)


def test_normalisation_does_not_depend_on_the_chunks() -> None:
    """One volume, one normalisation: as numpy, as the reader's dask array of planes and as a store
    of small chunks. Sampled in whole chunks, the live view (the layer read into memory) and a save
    (the layer's chunks) of a light-sheet volume differed by 5 % in their upper bound."""
    import dask.array as da

    from napari_niiv.data.normalise import fit_normalisation

    rng = np.random.default_rng(0)
    vol = (rng.gamma(1.5, 900, size=(40, 96, 96)) * (1 + np.arange(40)[:, None, None] / 10)).astype(np.uint16)
    expect = fit_normalisation(vol)
    for chunks in [(1, 96, 96), (4, 16, 16), (4, 32, 48)]:
        arr = da.from_array(vol, chunks=chunks)
        assert int(np.prod(arr.numblocks)) > 32
        assert fit_normalisation(arr) == expect, chunks


def test_normalisation_of_a_many_chunk_volume_reads_few_chunks(monkeypatch):
    """Fitting on a lazy volume of many chunks, larger than a stride may read, reads a bounded
    number of them, and still sees its range."""
    import dask.array as da

    from napari_niiv.data import normalise
    from napari_niiv.data.normalise import _SAMPLE_CHUNKS, fit_normalisation

    reads = []

    def block(block_info=None):
        reads.append(block_info[None]["chunk-location"])
        z = block_info[None]["chunk-location"][0]
        return np.full((4, 16, 16), z, dtype=np.uint16)

    arr = da.map_blocks(block, chunks=((4,) * 50, (16,) * 8, (16,) * 8), dtype=np.uint16)
    monkeypatch.setattr(normalise, "_STRIDE_BYTES", arr.nbytes - 1)
    norm = fit_normalisation(arr)
    assert len(reads) <= _SAMPLE_CHUNKS < arr.numblocks[0] * 64
    assert norm.low <= 1 and norm.high >= 48  # chunks from both ends of z


def test_spread_chunks_are_the_chunks_and_a_large_store_is_fingerprinted_without_a_stride(monkeypatch) -> None:
    """The normalisation's and the resume fingerprint's chunks are sliced by the chunk boundaries
    (``arr.blocks`` listed every key first: a 1 TB store of 32^3 chunks ran out of memory); over
    ``_DIGEST_STRIDE_CHUNKS`` chunks the fingerprint samples inside them instead of striding
    through all (which reads every chunk)."""
    import dask.array as da

    from napari_niiv.data import normalise

    arr = da.from_array(np.arange(30 * 20 * 10).reshape(30, 20, 10), chunks=(7, 6, 5))
    n = int(np.prod(arr.numblocks))
    picks = np.unique(np.linspace(0, n - 1, 9).round().astype(int))
    expect = [arr.blocks[np.unravel_index(i, arr.numblocks)].compute() for i in picks]
    got = [b.compute() for b in normalise._spread_blocks(arr, 9)]
    assert all(np.array_equal(a, b) for a, b in zip(expect, got, strict=True)) and len(got) == len(expect)
    digest = normalise.content_digest(arr)
    changed = arr.compute()
    changed[0, 0, 0] += 1  # in the first chunk, which both samples read
    assert normalise.content_digest(da.from_array(changed, chunks=(7, 6, 5))) != digest
    reads = []
    original = normalise._sample
    monkeypatch.setattr(normalise, "_sample", lambda a: reads.append(a.shape) or original(a))
    monkeypatch.setattr(normalise, "_DIGEST_STRIDE_CHUNKS", n - 1)
    normalise.content_digest(arr)
    assert reads == [arr.shape]
    monkeypatch.setattr(normalise, "_DIGEST_STRIDE_CHUNKS", n)
    normalise.content_digest(arr)
    assert reads == [arr.shape]  # up to the limit: the stride, as before (the same fingerprints)


@pytest.mark.parametrize("voxel", [(0, 1, 1), (float("nan"), 1, 1), (8, 0, 1), (1, 1), ("a", 1, 1)])
def test_as_volume_refuses_unusable_voxel_sizes(voxel) -> None:
    """They were taken (0, NaN) or failed with an IndexError (two numbers): found by the reader audit."""
    from napari_niiv.data.io import as_volume

    with pytest.raises(NiivInputError, match="voxel_size"):
        as_volume(np.zeros((4, 8, 8), np.uint8), voxel)
