import numpy as np
import pytest
import torch

from napari_niiv.data import fit_normalisation
from napari_niiv.data.degrade import THICK
from napari_niiv.inference.geometry import chunk_indices, output_geometry, output_region, output_shape
from napari_niiv.inference.reconstructor import NormalisedView, Reconstructor, reconstruct_volume
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.model import NiivModel
from napari_niiv.training.evaluate import interpolation, simulate
from tests.conftest import CancelAfter, random_model


def _whole(rec: Reconstructor, view: NormalisedView, shape) -> np.ndarray:
    return rec.block(view, shape, tuple(slice(0, s) for s in shape))


@pytest.mark.parametrize(
    ("alpha", "scale", "orientation", "precision", "atol"),
    [
        (8.0, 1.0, "xz", "fp32", 2e-5),
        (4.0, 1.0, "both", "fp32", 2e-5),
        (5.5, 0.5, "yz", "fp32", 2e-5),
        (5.5, 2.0, "both", "fp32", 2e-5),
        (3.0, 0.7, "xz", "fp32", 2e-5),
        # bf16 encoder convolutions round differently on differently sized tiles: seams stay invisible.
        (8.0, 1.0, "xz", "bf16", 1e-4),
        (3.0, 0.7, "both", "bf16", 1e-4),
    ],
)
@pytest.mark.slow
def test_tiled_equals_untiled(model, medulla, alpha, scale, orientation, precision, atol) -> None:
    """Blocks of odd sizes, narrow encoder tiles and small plane batches reproduce one pass."""
    vol = medulla[:3, :12, :40]
    view = NormalisedView(vol, fit_normalisation(vol))
    shape = output_shape(vol.shape, alpha, scale)
    settings = InferenceSettings(alpha=alpha, orientation=orientation, precision=precision)
    full = _whole(Reconstructor(model, settings, tile=1024, slice_batch=64), view, shape)
    tiled = np.empty_like(full)
    small = Reconstructor(model, settings, tile=20, slice_batch=3)
    for idx in chunk_indices(shape, (7, 9, 11)):
        tiled[idx] = small.block(view, shape, idx)
    np.testing.assert_allclose(tiled, full, atol=atol)
    assert full.shape == shape


def test_untrained_model_reconstructs_like_bilinear(medulla) -> None:
    """Geometry check: a zero-initialised residual model is bilinear interpolation along z, so
    its volume must match torch's bilinear upsampling of the pooled volume."""
    iso = medulla[:32, :16, :48].astype(np.float32) / 255
    low, gt = simulate(iso, 8.0)
    ours = reconstruct_volume(NiivModel(), low, InferenceSettings(alpha=8.0, orientation="xz"))
    norm = fit_normalisation(low)
    ref = interpolation("bilinear")(norm.apply(low), 8.0, gt.shape, THICK)
    np.testing.assert_allclose(norm.apply(ours), ref, atol=2e-3)


def test_output_shapes_and_voxel_sizes() -> None:
    assert output_shape((16, 128, 100), 8.0) == (128, 128, 100)
    assert output_shape((10, 100, 100), 5.5, 0.5) == (110, 200, 200)
    assert output_shape((10, 100, 100), 5.5, 2.0) == (28, 50, 50)
    geo = output_geometry((10, 100, 100), 10.0, 1.0, (40.0, 4.0, 4.0))
    assert geo.shape == (100, 100, 100)
    assert geo.voxel_size == pytest.approx((4.0, 4.0, 4.0))
    assert output_geometry((10, 100, 100), 10.0, 2.0, (40.0, 4.0, 4.0)).voxel_size == pytest.approx((8.0, 8.0, 8.0))


def test_both_is_mean_of_xz_and_yz(model, medulla) -> None:
    vol = medulla[:3, :10, :20]
    view = NormalisedView(vol, fit_normalisation(vol))
    shape = output_shape(vol.shape, 4.0)
    xz, yz, both = (
        _whole(Reconstructor(model, InferenceSettings(alpha=4.0, orientation=o)), view, shape)
        for o in ("xz", "yz", "both")
    )
    np.testing.assert_allclose(both, (xz + yz) / 2, atol=1e-6)
    assert not np.allclose(xz, yz)


def test_reconstruction_keeps_input_dtype_scale(model, medulla) -> None:
    out = reconstruct_volume(model, medulla[:4, :16, :16], InferenceSettings(alpha=4.0), out_dtype=np.uint8)
    assert out.dtype == np.uint8 and out.shape == (16, 16, 16)
    assert abs(float(out.mean()) - float(medulla[:4, :16, :16].mean())) < 25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_reconstruction_matches_cpu(model, medulla) -> None:
    vol = medulla[:4, :20, :20]
    a = reconstruct_volume(model, vol, InferenceSettings(alpha=4.0, device="cpu"))
    b = reconstruct_volume(model, vol, InferenceSettings(alpha=4.0, device="cuda"))
    np.testing.assert_allclose(a, b, atol=0.05)


def test_region_equals_the_same_part_of_the_whole_volume(model, medulla) -> None:
    vol = medulla[:4, :40, :40]
    whole = reconstruct_volume(model, vol, InferenceSettings(alpha=4.0, orientation="both", precision="fp32"))
    part = reconstruct_volume(
        model,
        vol,
        InferenceSettings(alpha=4.0, orientation="both", precision="fp32"),
        region=(slice(1, 3), slice(5, 30), slice(20, None)),
    )
    np.testing.assert_allclose(part, whole[4:12, 5:30, 20:], atol=1e-3)


def test_region_maps_to_output_indices() -> None:
    assert output_region((16, 100, 100), (128, 100, 100), (slice(2, 4), slice(0, 10), slice(90, None))) == (
        slice(16, 32),
        slice(0, 10),
        slice(90, 100),
    )
    assert output_region((10, 100, 100), (55, 200, 200), (slice(1, 2), slice(3, 4), slice(0, 1)))[0] == slice(5, 11)


def test_a_region_at_a_fractional_ratio_keeps_the_voxels_centred_inside_and_regions_meet() -> None:
    """At output scale 0.7 (20 -> 14 voxels) a region kept voxels that only overlapped it (centre
    outside), and two regions that meet shared a voxel (the CLI-stores audit 9)."""
    shape_in, shape_out = (20, 20, 20), (14, 14, 14)

    def along_z(start, stop):
        return output_region(shape_in, shape_out, (slice(start, stop), slice(None), slice(None)))[0]

    for start, stop in ((3, 13), (4, 13), (0, 3), (13, 20)):
        got = along_z(start, stop)
        centres = (np.arange(14) + 0.5) * 20 / 14
        assert list(range(got.start, got.stop)) == np.flatnonzero((centres >= start) & (centres < stop)).tolist()
    assert along_z(0, 3).stop == along_z(3, 13).start and along_z(3, 13).stop == along_z(13, 20).start
    assert along_z(13, 20).stop == 14


def test_a_block_is_cancelled_between_batches_of_planes_and_returns_nothing(model, medulla) -> None:
    """A save computes a column of chunks at once, which takes a while: the block asks
    ``cancelled`` between batches of planes and gives up (None) once it is true."""
    vol = medulla[:3, :12, :40]
    view = NormalisedView(vol, fit_normalisation(vol))
    shape = output_shape(vol.shape, 8.0, 1.0)
    rec = Reconstructor(model, InferenceSettings(alpha=8.0, precision="fp32"), slice_batch=4)
    after_two_batches = CancelAfter(2)
    everything = tuple(slice(0, s) for s in shape)
    assert rec.block(view, shape, everything, after_two_batches) is None
    assert after_two_batches.asked == 3  # 12 planes in batches of 4: asked before each, stopped before the third
    np.testing.assert_array_equal(rec.block(view, shape, everything, lambda: False), _whole(rec, view, shape))


@pytest.mark.parametrize("architecture", ["v1", "v2", "fast"])  # separable, attention, narrow separable
@pytest.mark.parametrize("scale", [1.0, 0.7])  # attention: neighbours shared on the output grid, or queried
def test_a_block_is_cancelled_inside_a_batch_of_planes_too(medulla, architecture, scale) -> None:
    """A batch of a save's block decodes for seconds (a Cancel of a niiv-em save took 24 s): the
    decoder asks ``cancelled`` between its chunks of points as well, so a cancel that comes after
    the batch began stops it; without one, the block is the same to the bit."""
    from napari_niiv.model import NiivConfig

    model = random_model(NiivConfig.named(architecture))
    vol = medulla[:6, :48, :64]
    view = NormalisedView(vol, fit_normalisation(vol))
    shape = output_shape(vol.shape, 4.0, scale)
    rec = Reconstructor(model, InferenceSettings(alpha=4.0, precision="fp32", scale=scale), slice_batch=1000)
    rec.engine.chunk = 512  # several chunks of points in this small block (attention models)
    everything = tuple(slice(0, s) for s in shape)
    assert rec.block(view, shape, everything, CancelAfter(1)) is None  # once the batch began
    np.testing.assert_array_equal(rec.block(view, shape, everything, lambda: False), _whole(rec, view, shape))


def test_the_python_api_says_what_it_wants_instead_of_failing_deep_inside(model, medulla, tmp_path) -> None:
    """A Weights object (what load_weights returns) is taken; a dict as settings or chunks of 0
    ended in an AttributeError or a ZeroDivision-like error deep inside (found by the reader audit)."""
    from napari_niiv.errors import NiivInputError
    from napari_niiv.inference.weights import load_weights, save_weights

    vol = medulla[:8, :40, :40]
    settings = InferenceSettings(alpha=4, precision="fp32", device="cpu")
    weights = load_weights(save_weights(tmp_path / "w.safetensors", model, 4.0, None))
    np.testing.assert_array_equal(
        reconstruct_volume(weights, vol, settings), reconstruct_volume(weights.model, vol, settings)
    )
    with pytest.raises(NiivInputError, match="settings: a dict is not InferenceSettings"):
        reconstruct_volume(model, vol, {"alpha": 4})
    with pytest.raises(NiivInputError, match="model: a str is not a niiv model"):
        reconstruct_volume("niiv-em", vol, settings)
    with pytest.raises(NiivInputError, match="chunks"):
        reconstruct_volume(model, vol, settings, chunks=(0, 0, 0))


def test_a_volume_too_narrow_says_what_to_do_in_the_viewer_too(model) -> None:
    """The message named the command line's region and cube (found by the lazy-layer audit)."""
    from napari_niiv.errors import NiivInputError
    from napari_niiv.inference.reconstructor import check_reconstructable

    with pytest.raises(NiivInputError, match="receptive field") as caught:
        check_reconstructable((8, 4, 4), model, "xz")
    assert "niiv-fast" in str(caught.value) and "cube" not in str(caught.value)
