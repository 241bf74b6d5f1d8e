"""Self-supervised training pairs: lateral (xy) crops, degraded by alpha along one in-plane axis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NiivInputError
from .degrade import THICK, Degradation, check_alpha
from .io import Volume
from .normalise import Normalisation, fit_normalisation

# Volumes up to this many bytes are read into memory once; larger ones are cropped lazily.
_IN_MEMORY_BYTES = 2 * 1024**3


def volume_label(volumes: Sequence[Volume], i: int) -> str:
    """How a message names training volume ``i``: its name, and its place when there are several."""
    name = volumes[i].name or "(unnamed)"
    return (
        f"the training volume ({name})" if len(volumes) == 1 else f"training volume {i + 1} of {len(volumes)} ({name})"
    )


@dataclass
class Batch:
    """Low-resolution inputs (B, 1, h, w), query coords (B, N, 2) in input pixel units, targets (B, N),
    and the alpha and degradation that made the inputs."""

    inputs: torch.Tensor
    coords: torch.Tensor
    targets: torch.Tensor
    alpha: float = 8.0
    degradation: Degradation = THICK

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.inputs.to(device), self.coords.to(device), self.targets.to(device), self.alpha, self.degradation
        )


class LateralPairSampler:
    """Random xy crops with flips and 90-degree rotations, degraded by alpha along rows.

    Rotations make both in-plane axes play "z", which is what a real xz and yz slice needs.
    ``alpha`` is one value or a ``(low, high)`` range, drawn uniformly (fractions included) per
    batch; each batch uses one of ``degradations``, drawn uniformly, so one model learns them all.
    ``focus`` (see :func:`parse_focus`) sends a ``focus_fraction`` of the batches to the
    degradations and alpha sub-ranges a model is weakest at, the rest staying uniform.
    ``z_ranges`` limits which xy planes of each volume may be used (to hold data out).
    Each batch is a pure function of ``(seed, step)``, so a resumed run sees the same data.
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        alpha: float | tuple[float, float],
        crop: int = 64,
        points: int = 2048,
        z_ranges: Sequence[tuple[int, int] | None] | None = None,
        normalisations: Sequence[Normalisation] | None = None,
        degradations: Sequence[Degradation] = (THICK,),
        focus: Sequence[tuple[Degradation, float, float]] = (),
        focus_fraction: float = 0.0,
    ) -> None:
        lo, hi = (alpha, alpha) if np.isscalar(alpha) else alpha  # type: ignore[misc]
        self.alpha_range = (check_alpha(lo), check_alpha(hi))
        if self.alpha_range[0] > self.alpha_range[1]:
            raise NiivInputError(f"the alpha range {lo:g}-{hi:g} runs backwards; give the smaller alpha first")
        self.degradations = tuple(degradations)
        if not self.degradations:
            raise NiivInputError("give at least one degradation")
        self.focus = tuple(focus)
        self.focus_fraction = float(focus_fraction)
        if not 0.0 <= self.focus_fraction <= 1.0:
            raise NiivInputError(f"the focus fraction {focus_fraction:g} must lie between 0 and 1")
        for kind, f_lo, f_hi in self.focus:
            if kind not in self.degradations or not (self.alpha_range[0] <= f_lo <= f_hi <= self.alpha_range[1]):
                raise NiivInputError(
                    f"focus {kind}@{f_lo:g}-{f_hi:g} lies outside the run's degradations "
                    f"({','.join(map(str, self.degradations))}) or alpha range "
                    f"{self.alpha_range[0]:g}-{self.alpha_range[1]:g}; focus on part of what the run trains"
                )
        self.crop = int(crop)
        widest = self.alpha_range[1]
        if int(np.floor(self.crop / widest + 1e-9)) < 2:
            raise NiivInputError(
                f"crop {crop} is too small for alpha {widest:g}: use a crop of at least {int(np.ceil(2 * widest))}"
            )
        for d in self.degradations:  # here, not at the first batch (after the progress bar has started)
            d.check_extent(self.crop, widest)
        self.points = int(points)
        self._matrices: dict[tuple[Degradation, float], torch.Tensor] = {}
        self.volumes = []
        self.norms = []
        self.labels = [volume_label(volumes, i) for i in range(len(volumes))]  # for messages
        ranges = list(z_ranges) if z_ranges is not None else [None] * len(volumes)
        for i, vol in enumerate(volumes):
            z, y, x = vol.shape
            if min(y, x) < self.crop:
                raise NiivInputError(
                    f"{vol.name}: xy size {y}x{x} is smaller than the training crop {self.crop}; "
                    "use a smaller crop or a larger volume"
                )
            z0, z1 = ranges[i] if ranges[i] is not None else (0, z)
            data = vol.data
            if data.nbytes <= _IN_MEMORY_BYTES:
                data = np.asarray(data[z0:z1].compute())
                z0, z1 = 0, z1 - z0
            if normalisations is not None:
                norm = normalisations[i]
            else:  # of the planes trained on, a refusal naming the volume (which of several)
                norm = fit_normalisation(data[z0:z1], what=self.labels[i])
            self.volumes.append((data, z0, z1))
            self.norms.append(norm)
        weights = np.array([(z1 - z0) for _, z0, z1 in self.volumes], dtype=np.float64)
        self.weights = weights / weights.sum()

    def draw(self, rng: np.random.Generator) -> tuple[float, Degradation]:
        """This batch's alpha and degradation (no draw at all for a single alpha and degradation, so
        such runs see the batches they always did; likewise no focus draw without a focus)."""
        if self.focus and self.focus_fraction > 0 and rng.random() < self.focus_fraction:
            kind, f_lo, f_hi = self.focus[int(rng.integers(len(self.focus)))]
            return (float(rng.uniform(f_lo, f_hi)) if f_hi > f_lo else f_lo), kind
        lo, hi = self.alpha_range
        alpha = float(rng.uniform(lo, hi)) if hi > lo else lo
        kind = self.degradations[int(rng.integers(len(self.degradations)))] if len(self.degradations) > 1 else None
        return alpha, kind or self.degradations[0]

    def matrix(self, degradation: Degradation, alpha: float) -> torch.Tensor:
        key = (degradation, alpha)
        if key not in self._matrices:
            if len(self._matrices) > 64:
                self._matrices.clear()
            self._matrices[key] = torch.from_numpy(degradation.matrix(self.crop, alpha))
        return self._matrices[key]

    def batch(self, seed: int, step: int, size: int) -> Batch:
        rng = np.random.default_rng([seed, step])
        alpha, degradation = self.draw(rng)
        hr = torch.from_numpy(self.crops(rng, size))  # (B, crop, crop)
        lr = torch.einsum("lh,bhw->blw", self.matrix(degradation, alpha), hr).unsqueeze(1)
        # Supervise only rows fully inside the degraded extent.
        rows = int(np.floor(lr.shape[2] * alpha + 1e-9))
        points = min(self.points, rows * self.crop)
        flat = torch.from_numpy(rng.random((size, points)))
        idx = (flat * (rows * self.crop)).long().clamp_max(rows * self.crop - 1)
        r = (idx // self.crop).float()
        c = (idx % self.crop).float()
        coords = torch.stack(((r + 0.5) / alpha, c + 0.5), dim=-1)
        targets = torch.gather(hr[:, :rows].reshape(size, -1), 1, idx)
        return Batch(lr.float(), coords.float(), targets.float(), alpha, degradation)

    def crops(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` normalised, augmented full-resolution crops (B, crop, crop); the first draws
        of the ``(seed, step)`` stream that ``batch`` then continues for the query points."""
        return np.stack([self._crop(rng) for _ in range(size)])

    def _crop(self, rng: np.random.Generator) -> np.ndarray:
        v = int(rng.choice(len(self.volumes), p=self.weights))
        data, z0, z1 = self.volumes[v]
        _, y, x = data.shape
        z = int(rng.integers(z0, z1))
        y0 = int(rng.integers(0, y - self.crop + 1))
        x0 = int(rng.integers(0, x - self.crop + 1))
        tile = np.asarray(data[z, y0 : y0 + self.crop, x0 : x0 + self.crop])
        if tile.dtype.kind == "f" and not np.isfinite(tile).all():  # the loss would turn NaN a step later
            raise NiivInputError(
                f"{self.labels[v]} contains NaN or infinite values (plane z {z}, y {y0}-{y0 + self.crop - 1}, "
                f"x {x0}-{x0 + self.crop - 1}); replace them (e.g. with 0 or the background level) or leave "
                "that part out"
            )
        tile = self.norms[v].apply(tile)
        tile = np.rot90(tile, int(rng.integers(0, 4)))
        if rng.random() < 0.5:
            tile = tile[:, ::-1]
        return np.ascontiguousarray(tile, dtype=np.float32)


def parse_focus(text: str) -> tuple[tuple[Degradation, float, float], ...]:
    """``DEGRADATION@LO-HI`` items, comma-separated (e.g. ``thick@10-12,thin@2-4``): where a
    run's extra batches go. ``@`` because ``psf:FWHM`` already uses the colon."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        kind, at, span = item.partition("@")
        lo, dash, hi = span.partition("-")
        try:
            if not (at and dash):
                raise ValueError
            entry = (Degradation.parse(kind), float(lo), float(hi))
        except ValueError:
            raise NiivInputError(
                f"focus {item!r} is not DEGRADATION@LO-HI; write for example thick@10-12,thin@2-4"
            ) from None
        if entry[1] > entry[2]:
            raise NiivInputError(f"focus {item!r} runs backwards; give the smaller alpha first")
        out.append(entry)
    return tuple(out)
