import numpy as np
import pytest

from napari_niiv.data.degrade import Degradation
from napari_niiv.errors import NiivInputError
from napari_niiv.training.evaluate import cube_origins, cut_cubes, interpolation, niiv_method, simulate


def test_cubes_cover_the_region_first_at_zero_last_flush() -> None:
    assert cube_origins(128, 128) == [0]
    assert cube_origins(250, 128) == [0, 122]
    assert cube_origins(300, 100) == [0, 100, 200]
    cubes = cut_cubes(np.zeros((128, 250, 250)), 128)
    assert len(cubes) == 4 and all(c.shape == (128, 128, 128) for c in cubes)
    with pytest.raises(NiivInputError, match="smaller than --cube"):
        cube_origins(100, 128)
    with pytest.raises(NiivInputError, match=r"200x250x100 voxels \(z, y, x\), smaller in x than --cube 128"):
        cut_cubes(np.zeros((200, 250, 100)), 128)
    with pytest.raises(NiivInputError, match=r"the volume is 90x100x100 voxels \(z, y, x\), smaller in z and y than"):
        cut_cubes(np.zeros((100, 90, 100)), (128, 128, 100), ("y", "z", "x"), "the volume")  # xy slices' (y, z, x)


def test_simulate_pools_z_and_trims_ground_truth() -> None:
    iso = np.random.default_rng(0).random((20, 4, 4)).astype(np.float32)
    low, gt = simulate(iso, 8.0)
    assert low.shape == (2, 4, 4) and gt.shape == (16, 4, 4)
    np.testing.assert_allclose(low[1], iso[8:16].mean(0), atol=1e-6)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("alpha", [4.0, 8.0])
def test_interpolation_at_a_whole_alpha_is_torchs(mode, alpha) -> None:
    """The README's numbers (whole alphas) stay what F.interpolate gave."""
    import torch
    import torch.nn.functional as F

    low, gt = simulate(np.random.default_rng(1).random((40, 6, 5)).astype(np.float32), alpha)
    t = torch.from_numpy(low).permute(1, 0, 2).unsqueeze(1)
    kw = {} if mode == "nearest" else {"align_corners": False}
    ref = F.interpolate(t, size=(gt.shape[0], gt.shape[2]), mode=mode, **kw).squeeze(1).permute(1, 0, 2).clamp(0, 1)
    np.testing.assert_allclose(interpolation(mode)(low, alpha, gt.shape), ref.numpy(), atol=1e-5)


def test_fractional_alpha_scores_each_truth_plane_at_its_own_depth() -> None:
    """Alpha 2.5: 51 sections cover 127.5 planes. Plane k lies at section coordinate (k + 0.5) / 2.5;
    stretching the 51 sections over the 127 truth planes (as before) shifted the bottom ones by up
    to half a plane, so a 2-plane larger cube changed bicubic by 3 dB CF-PSNR."""
    ramp = np.broadcast_to((np.arange(128, dtype=np.float32) + 0.5)[:, None, None] / 128, (128, 4, 4))
    low, gt = simulate(ramp, 2.5, Degradation("thin"))
    assert low.shape[0] == 51 and gt.shape[0] == 127
    # a linear ramp, thin sections (a one-plane box: exactly the ramp at each centre): bilinear
    # interpolation at the right depths gives it back exactly
    np.testing.assert_allclose(interpolation("bilinear")(low, 2.5, gt.shape)[2:-2], gt[2:-2], atol=1e-6)


def test_niiv_scores_a_plane_the_same_whatever_the_cube_size() -> None:
    """niiv in evaluate decodes each truth plane where it lies: the top planes of a 128 and a 130
    cube at alpha 2.5 (n_sections * alpha 127.5 and 130) come out the same."""
    from napari_niiv.inference.settings import InferenceSettings
    from tests.conftest import TINY, random_model

    iso = np.random.default_rng(2).random((130, 3, 24)).astype(np.float32)
    run = niiv_method(random_model(TINY), InferenceSettings(alpha=2.5, orientation="xz", precision="fp32"))
    outs = []
    for n in (128, 130):
        low, gt = simulate(iso[:n], 2.5)
        outs.append(run(low, 2.5, gt.shape))
    np.testing.assert_allclose(outs[0][:60], outs[1][:60], atol=1e-4)


def test_niiv_at_a_whole_alpha_is_reconstruct_volume() -> None:
    from napari_niiv.inference.reconstructor import reconstruct_volume
    from napari_niiv.inference.settings import InferenceSettings
    from tests.conftest import TINY, random_model

    model = random_model(TINY)
    settings = InferenceSettings(alpha=4.0, orientation="both", precision="fp32")
    low, gt = simulate(np.random.default_rng(3).random((34, 20, 24)).astype(np.float32), 4.0)
    np.testing.assert_allclose(
        niiv_method(model, settings)(low, 4.0, gt.shape),
        reconstruct_volume(model, low, settings)[: gt.shape[0]],
        atol=1e-5,
    )
