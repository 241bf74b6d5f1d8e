"""The paper's metrics: Fourier-clipped PSNR, PSNR and SSIM, per 2D slice, images in [0, data_range].

CF-PSNR (paper section 4, supplement): A = L(FFT(I)), B = L(FFT(I_pred)) with the unnormalised
DFT, zero frequency centred, L keeping the frequencies inside the cutoff;
CF-PSNR = 20 log10(I_max * N) - 10 log10 sum |A - B|^2, N = pixels per slice. Unclipped it equals
ordinary PSNR (Parseval). The paper's cutoff is a radius of 25 DFT bins on 128x128 slices (about
39 % of Nyquist). Other slice sizes keep that *fraction of Nyquist* on each axis: the disk becomes
an ellipse of semi-axes ``cutoff * H / 128`` and ``cutoff * W / 128`` bins, which is exactly the
paper's disk at 128x128 and measures the same spatial frequencies (cycles per voxel) elsewhere.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from ..errors import NiivInputError

REFERENCE_SIZE = 128


def _pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"expected two 2D slices of one shape, got {gt.shape} and {pred.shape}")
    return gt, pred


def frequency_mask(shape: tuple[int, int], cutoff: float, reference_size: int = REFERENCE_SIZE) -> np.ndarray:
    """Boolean mask of the centred DFT bins kept by the low-pass operator L."""
    h, w = shape
    ky = np.arange(h) - h // 2
    kx = np.arange(w) - w // 2
    ry = cutoff * h / reference_size
    rx = cutoff * w / reference_size
    return (ky[:, None] / ry) ** 2 + (kx[None, :] / rx) ** 2 <= 1.0


def cf_psnr(
    gt: np.ndarray,
    pred: np.ndarray,
    cutoff: float | None = 25.0,
    data_range: float = 1.0,
    reference_size: int = REFERENCE_SIZE,
) -> float:
    """Fourier-clipped PSNR of one slice; ``cutoff=None`` keeps every frequency (= PSNR)."""
    gt, pred = _pair(gt, pred)
    diff = np.fft.fftshift(np.fft.fft2(gt - pred))  # the DFT is linear: L(F I) - L(F P) = L(F(I - P))
    if cutoff is not None:
        diff = diff[frequency_mask(gt.shape, cutoff, reference_size)]
    err = float(np.sum(np.abs(diff) ** 2))
    if err == 0.0:
        return float("inf")
    return 20.0 * np.log10(data_range * gt.size) - 10.0 * np.log10(err)


def psnr(gt: np.ndarray, pred: np.ndarray, data_range: float = 1.0) -> float:
    gt, pred = _pair(gt, pred)
    mse = float(np.mean((gt - pred) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(data_range**2 / mse)


def ssim(gt: np.ndarray, pred: np.ndarray, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """SSIM (Wang et al. 2004): 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, mean over
    the pixels whose window lies inside the slice (as scikit-image computes it)."""
    gt, pred = _pair(gt, pred)

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma, mode="reflect", truncate=3.5)

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mx, my = blur(gt), blur(pred)
    vx = blur(gt * gt) - mx * mx
    vy = blur(pred * pred) - my * my
    cxy = blur(gt * pred) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    pad = int(3.5 * sigma + 0.5)
    return float(s[pad:-pad, pad:-pad].mean())


def slice_metrics(gt: np.ndarray, pred: np.ndarray, cutoff: float = 25.0, data_range: float = 1.0) -> dict[str, float]:
    """Mean CF-PSNR, PSNR and SSIM over a stack of 2D slices (S, H, W), as the paper reports.
    Constant ground-truth slices (a blank plane) are left out: any interpolation gets them exactly,
    and their infinite PSNR would make every mean infinite; a stack of only those is refused."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.ndim == 2:
        gt, pred = gt[None], pred[None]
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    rows = [
        (cf_psnr(g, p, cutoff, data_range), psnr(g, p, data_range), ssim(g, p, data_range))
        for g, p in zip(gt, pred, strict=True)
        if g.min() != g.max()
    ]
    if not rows:
        raise NiivInputError(f"all {len(gt)} slices to score are constant (blank): there is nothing to score on them")
    cf, ps, ss = (float(np.mean(v)) for v in zip(*rows, strict=True))
    return {"cf_psnr": cf, "psnr": ps, "ssim": ss}
