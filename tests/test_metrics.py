import numpy as np
import pytest
from skimage.metrics import structural_similarity

from napari_niiv.training.metrics import cf_psnr, frequency_mask, psnr, slice_metrics, ssim


def test_unclipped_cf_psnr_equals_psnr() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((128, 96))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    assert cf_psnr(a, b, cutoff=None) == pytest.approx(psnr(a, b), abs=1e-9)


def test_psnr_by_hand() -> None:
    a = np.zeros((4, 4))
    b = np.full((4, 4), 0.1)
    assert psnr(a, b) == pytest.approx(20.0)  # 10 log10(1 / 0.01)


def test_cf_psnr_by_hand_for_a_single_pixel_error() -> None:
    """An error d at one pixel has a flat spectrum |d| in every bin, so the clipped error sum is
    (bins inside the cutoff) * d^2 and CF-PSNR = 20 log10(N) - 10 log10(bins * d^2)."""
    gt = np.zeros((128, 128))
    pred = gt.copy()
    pred[40, 70] = 0.5
    bins = int(frequency_mask((128, 128), 25).sum())
    expected = 20 * np.log10(128 * 128) - 10 * np.log10(bins * 0.25)
    assert cf_psnr(gt, pred, 25) == pytest.approx(expected, abs=1e-9)


def test_cutoff_is_a_disk_of_25_bins_at_128() -> None:
    mask = frequency_mask((128, 128), 25)
    ky, kx = np.nonzero(mask)
    r = np.hypot(ky - 64, kx - 64)
    assert r.max() <= 25 and mask[64, 64 + 25] and not mask[64, 64 + 26]
    assert mask.sum() == pytest.approx(np.pi * 25**2, rel=0.01)


def test_cutoff_scales_with_slice_size() -> None:
    """Other sizes keep the same fraction of Nyquist on each axis (an ellipse)."""
    mask = frequency_mask((64, 256), 25)
    assert mask[32 + 12, 128] and not mask[32 + 13, 128]
    assert mask[32, 128 + 50] and not mask[32, 128 + 51]


def test_low_frequency_errors_count_high_frequency_noise_does_not() -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:128, :128]
    gt = 0.5 + 0.2 * np.sin(2 * np.pi * x / 32)
    checker = 0.1 * ((-1.0) ** (y + x))  # Nyquist-frequency noise only
    assert cf_psnr(gt, gt + checker, 25) > 100  # invisible below the cutoff
    assert psnr(gt, gt + checker) == pytest.approx(20.0)
    assert cf_psnr(gt, gt + 0.05 * rng.standard_normal(gt.shape), 25) < 60


def test_ssim_matches_scikit_image_gaussian() -> None:
    rng = np.random.default_rng(2)
    a = rng.random((60, 80))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    ref = structural_similarity(a, b, data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-10)
    assert ssim(a, a) == pytest.approx(1.0)


def test_slice_metrics_average_over_slices() -> None:
    rng = np.random.default_rng(3)
    gt = rng.random((3, 32, 32))
    pred = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1)
    m = slice_metrics(gt, pred)
    assert m["psnr"] == pytest.approx(np.mean([psnr(g, p) for g, p in zip(gt, pred, strict=True)]))
    with pytest.raises(ValueError):
        cf_psnr(gt[0], pred[0, :10])


def test_a_blank_slice_is_left_out_of_the_means_and_only_blank_slices_are_refused() -> None:
    """A blank plane (any interpolation gets it exactly) made every mean infinite: the fine-tune's
    held-out check then said 'bilinear there: inf dB' and wrote -Infinity into the card."""
    from napari_niiv.errors import NiivInputError

    rng = np.random.default_rng(0)
    gt = rng.random((3, 32, 32)).astype(np.float32)
    pred = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1).astype(np.float32)
    with_blank_gt, with_blank_pred = gt.copy(), pred.copy()
    with_blank_gt[1] = with_blank_pred[1] = 0.0
    kept = slice_metrics(gt[[0, 2]], pred[[0, 2]])
    assert slice_metrics(with_blank_gt, with_blank_pred) == kept and all(np.isfinite(v) for v in kept.values())
    with pytest.raises(NiivInputError, match="constant"):
        slice_metrics(np.zeros((2, 16, 16)), np.zeros((2, 16, 16)))
