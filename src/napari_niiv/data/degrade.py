"""Simulated axial degradation: how a microscope turns isotropic planes into alpha-spaced sections.

Three forward models, each a (n_low, n_high) matrix applied along one axis, so training, evaluation
and the sample data share one definition. Section ``i`` is centred at ``(i + 0.5) * alpha`` in
high-resolution pixel edges (pixel ``j`` covers ``[j, j + 1)``), the geometry convention of
``inference.geometry``:

- ``thick``: a box average over the whole section ``[i * alpha, (i + 1) * alpha)`` (serial-section
  EM with sections as thick as their spacing; FIB-SEM milled in thick steps).
- ``thin``: a box one xy voxel thick at the section's centre (sections, or kept planes, far thinner
  than their spacing). At an odd alpha that is one plane (every alpha-th plane of an isotropic
  stack); at an even alpha the centre falls on a plane border, so it is half of each of two planes.
- ``psf``: a Gaussian axial blur of full width at half maximum ``fwhm`` xy voxels (default: one
  section spacing, alpha), integrated over each pixel, sampled at the section centre (widefield,
  confocal and light-sheet microscopy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import NiivInputError

# Anisotropies niiv accepts: 1 (already isotropic) up to far beyond any microscope's.
ALPHA_RANGE = (1.0, 100.0)
DEGRADATIONS = ("thick", "thin", "psf")
# An axial PSF wider than this many xy voxels is not a microscope niiv can help.
FWHM_RANGE = (0.1, 200.0)


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


def check_simulated_alpha(alpha: object) -> float:
    """An alpha to simulate (evaluation): :func:`check_alpha`'s, above 1 (alpha 1 degrades nothing,
    and every method would score an infinite PSNR)."""
    value = check_alpha(alpha)
    if value <= 1.0:
        raise NiivInputError(
            "alpha 1 simulates no anisotropy (every method would score an infinite PSNR): give an alpha above 1"
        )
    return value


@dataclass(frozen=True)
class Degradation:
    """One axial forward model: ``kind`` in ``DEGRADATIONS``; ``fwhm`` (xy voxels) only for ``psf``,
    ``None`` meaning one section spacing."""

    kind: str = "thick"
    fwhm: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in DEGRADATIONS:
            raise NiivInputError(
                f"degradation must be one of {', '.join(DEGRADATIONS)}, got {self.kind!r}: thick for sections "
                "as thick as their spacing, thin for thin sections far apart, psf for light microscopy"
            )
        if self.fwhm is not None:
            if self.kind != "psf":
                raise NiivInputError(f"a FWHM applies only to the psf degradation, not to {self.kind!r}")
            lo, hi = FWHM_RANGE
            try:
                value = float(self.fwhm)
            except (TypeError, ValueError):
                value = float("nan")
            if not (math.isfinite(value) and lo <= value <= hi):
                raise NiivInputError(
                    f"the psf FWHM must be a number of xy voxels from {lo:g} to {hi:g}, got {self.fwhm!r}"
                )
            object.__setattr__(self, "fwhm", value)

    @classmethod
    def parse(cls, text: str) -> Degradation:
        """``thick``, ``thin``, ``psf`` or ``psf:FWHM`` (the CLI's and the cards' spelling)."""
        kind, _, fwhm = str(text).strip().partition(":")
        if fwhm and kind != "psf":
            raise NiivInputError(f"only psf takes a FWHM (psf:FWHM in xy voxels), got {text!r}")
        try:
            value = float(fwhm) if fwhm else None
        except ValueError:
            raise NiivInputError(f"psf:FWHM needs a number of xy voxels, got {text!r}") from None
        return cls(kind, value)

    def __str__(self) -> str:
        return f"psf:{self.fwhm:g}" if self.kind == "psf" and self.fwhm is not None else self.kind

    def thickness(self, alpha: float) -> float:
        """How many xy voxels thick one section is (what a model with an acquisition embedding is
        told): the spacing ``alpha`` for thick sections, one voxel for thin ones, the FWHM for psf."""
        if self.kind == "thick":
            return float(alpha)
        if self.kind == "thin":
            return 1.0
        return float(self.fwhm if self.fwhm is not None else alpha)

    def check_extent(self, n_high: int, alpha: float) -> None:
        """Refuse a psf blur wider than the ``n_high`` voxels it is simulated over (a training crop,
        an evaluation cube): every section would then be nearly the same average of the whole, so
        training would learn from no signal and every method would score alike (the confocal nuclei,
        --cube 128, psf:150: nearest, bilinear, bicubic and niiv-lm all 30.18 dB CF-PSNR)."""
        if self.kind == "psf" and self.thickness(alpha) > n_high:
            raise NiivInputError(
                f"the psf FWHM of {self.thickness(alpha):g} xy voxels is wider than the {n_high} voxels it is "
                "simulated over (the training crop or the evaluation cube): every section would be nearly the same "
                "blur of the whole; give the FWHM your microscope has (a few xy voxels to a few tens), or a larger "
                "crop or cube"
            )

    def matrix(self, n_high: int, alpha: float) -> np.ndarray:
        """(n_low, n_high) weights, each row summing to 1; ``n_low = floor(n_high / alpha)``. A psf
        wider than ``n_high`` is refused (:meth:`check_extent`)."""
        alpha = check_alpha(alpha)
        self.check_extent(n_high, alpha)
        if self.kind == "thick":
            return pooling_matrix(n_high, alpha)
        n_low = int(np.floor(n_high / alpha + 1e-9))
        centres = (np.arange(n_low, dtype=np.float64) + 0.5) * alpha
        edges = np.arange(n_high + 1, dtype=np.float64)
        if self.kind == "thin":
            lo, hi = centres[:, None] - 0.5, centres[:, None] + 0.5
            w = np.clip(np.minimum(edges[None, 1:], hi) - np.maximum(edges[None, :-1], lo), 0.0, None)
        else:
            sigma = (self.fwhm if self.fwhm is not None else alpha) / (2.0 * math.sqrt(2.0 * math.log(2.0)))
            cdf = _normal_cdf((edges[None, :] - centres[:, None]) / sigma)
            w = cdf[:, 1:] - cdf[:, :-1]
        # Near the volume's ends part of the kernel falls outside: the rest carries all the weight.
        return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)

    def apply(self, x: np.ndarray, alpha: float, axis: int = 0) -> np.ndarray:
        """Degrade ``x`` by ``alpha`` along ``axis``."""
        x = np.asarray(x, dtype=np.float32)
        m = self.matrix(x.shape[axis], alpha)
        out = np.tensordot(m, np.moveaxis(x, axis, 0), axes=(1, 0))
        return np.moveaxis(out, 0, axis)


THICK = Degradation("thick")  # the paper's (and the default) forward model


def _normal_cdf(t: np.ndarray) -> np.ndarray:
    from math import erf

    return 0.5 * (1.0 + np.vectorize(erf, otypes=[np.float64])(t / math.sqrt(2.0)))


def parse_degradations(texts: str | list[str] | tuple[str, ...]) -> tuple[Degradation, ...]:
    """A comma-separated list (or sequence) of degradations, e.g. ``thick,thin``; duplicates refused."""
    items = texts.split(",") if isinstance(texts, str) else list(texts)
    out = tuple(d if isinstance(d, Degradation) else Degradation.parse(d) for d in items if str(d).strip())
    if not out:
        raise NiivInputError(f"give at least one degradation ({', '.join(DEGRADATIONS)})")
    if len(set(out)) != len(out):
        raise NiivInputError(f"each degradation once, got {','.join(map(str, out))}")
    return out


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
    return THICK.apply(x, alpha, axis)
