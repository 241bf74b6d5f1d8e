"""Simulated axial degradation: area-average pooling by alpha along one axis (integer or not)."""

from __future__ import annotations

import numpy as np

from ..errors import NiivInputError

# Anisotropies niiv accepts: 1 (already isotropic) up to far beyond any microscope's.
ALPHA_RANGE = (1.0, 100.0)


def check_alpha(alpha: object) -> float:
    """Anisotropy: a finite number in ``ALPHA_RANGE`` (1 means already isotropic)."""
    try:
        value = float(alpha)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = float("nan")
    lo, hi = ALPHA_RANGE
    if not (np.isfinite(value) and lo <= value <= hi):
        raise NiivInputError(
            f"alpha must be a number from {lo:g} to {hi:g} (the z voxel size divided by the xy voxel size), "
            f"got {alpha!r}; alpha 1 means the volume is already isotropic"
        )
    return value


def pooling_matrix(n_high: int, alpha: float) -> np.ndarray:
    """(n_low, n_high) weights: low pixel i averages high pixels over [i*alpha, (i+1)*alpha).

    Fractional alpha weights the partly covered high pixels by their overlap, so alpha 5.5 is a
    true box filter of width 5.5, and integer alpha is plain average pooling.
    """
    alpha = check_alpha(alpha)
    n_low = int(np.floor(n_high / alpha + 1e-9))
    edges = np.arange(n_high + 1, dtype=np.float64)
    lo = np.arange(n_low, dtype=np.float64)[:, None] * alpha
    hi = lo + alpha
    overlap = np.clip(np.minimum(edges[None, 1:], hi) - np.maximum(edges[None, :-1], lo), 0.0, None)
    return (overlap / alpha).astype(np.float32)


def pool_axis(x: np.ndarray, alpha: float, axis: int = 0) -> np.ndarray:
    """Average-pool ``x`` by ``alpha`` along ``axis`` (what an alpha-times thicker section sees)."""
    x = np.asarray(x, dtype=np.float32)
    m = pooling_matrix(x.shape[axis], alpha)
    moved = np.moveaxis(x, axis, 0)
    out = np.tensordot(m, moved, axes=(1, 0))
    return np.moveaxis(out, 0, axis)
