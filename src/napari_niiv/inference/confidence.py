"""The confidence map: where niiv's reconstruction is uncertain. Its one home.

**Measure.** The absolute disagreement ``|xz - yz|`` between the volume decoded from xz slices
and the one decoded from yz slices, at the same output points, in the input's intensity units.
The two see different slices of the same data (x or y as the well-sampled column axis), so they
agree where the input pins the structure down and part where it does not. Bright means *low*
confidence.

It is pointwise: a block, a live view or a lazy tile of the map is a function of the output
points alone, so it has the geometry of the reconstruction (:mod:`.geometry`) and stitches like
it, and with orientation ``both`` (which decodes xz and yz anyway) it costs nothing extra.
Flipped-input disagreement (x, y or z flipped, decoded, flipped back) was measured too: combined
with ``|xz - yz|`` it ranked errors no better (top-10 % error ratio +0.01 to +0.02) for two to
three times the model work, so it is not used. Learned maps did not reach the target either
(two training cubes, two held-out, alpha 8): a log-linear fit of the error on |xz - yz|, z and
in-plane gradients, |niiv - bilinear|, intensity and the position between sections, each
smoothed at 1-4 voxels, ranked it at 1.57 (against 1.46 for |xz - yz| alone on those cubes); a
small CNN on xz slices of [xz, yz, bilinear, section phase], 8 minutes of training, at 1.43.
Other models as an ensemble did not either (two held-out cubes, alpha 8: |xz - yz| 1.51): the
disagreement of niiv-em with niiv-fast or with niiv-v1-fibsem-a8 alone 1.35-1.36, added to
|xz - yz| 1.53-1.54, the spread of all six (three models, xz and yz) 1.53, for three times the work.
``benchmarks/bench_confidence.py`` measures how well the map ranks the real error on held-out data.

Used by :class:`.reconstructor.Reconstructor` (blocks, ``niiv reconstruct --confidence``),
:class:`.views.ViewRenderer` (live views) and :class:`.lazy_volume.LazyIsotropic` (lazy tiles).
No napari, no torch here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# The two reconstructions whose disagreement is the map.
SLICES = ("xz", "yz")
# Colour range of a map layer: 0 to this fraction of the input's normalised intensity range (its
# 0.01-99.99 percentiles): about the 99.5th percentile of the map on the FIB-SEM sample at alpha 8.
CONTRAST = 0.2
COLORMAP = "magma"


def orientations(settings: Any, plane: str = "xz", confidence: bool = False) -> tuple[str, ...]:
    """Slices to decode for a view of ``plane`` (whole volumes: 'xz'): those ``settings`` ask for,
    then, with ``confidence``, whichever of xz and yz they lack."""
    own = tuple(settings.orientations(plane))
    return own + tuple(o for o in SLICES if o not in own) if confidence else own


def reconstruction(parts: Mapping[str, np.ndarray], orients: Sequence[str]) -> np.ndarray:
    """The reconstruction from decoded ``parts`` (orientation -> image): the one orientation
    asked for, or the average of xz and yz."""
    first = parts[orients[0]]
    return first if len(orients) == 1 else (first + parts[orients[1]]) * 0.5


def disagreement(parts: Mapping[str, np.ndarray]) -> np.ndarray:
    """The map in normalised intensities (the input mapped to [0, 1]): ``|xz - yz|``."""
    missing = [o for o in SLICES if o not in parts]
    if missing:
        raise ValueError(f"the confidence map needs the {' and '.join(SLICES)} reconstructions; {missing} missing")
    return np.abs(np.asarray(parts["xz"], np.float32) - np.asarray(parts["yz"], np.float32))


def to_intensity(normalised: np.ndarray, norm: Any) -> np.ndarray:
    """A map in normalised units in the input's intensity units (a difference: scaled, not offset)."""
    return np.asarray(normalised, np.float32) * np.float32(norm.high - norm.low)


def contrast_limits(norm: Any) -> tuple[float, float]:
    """Colour range of a map layer of an input normalised by ``norm`` (explicit: lazy data)."""
    return 0.0, float(CONTRAST * (norm.high - norm.low))


def top_fraction_ratio(uncertainty: np.ndarray, error: np.ndarray, fraction: float = 0.1) -> float:
    """Mean of ``error`` over the voxels in the top ``fraction`` of ``uncertainty``, over the mean
    of ``error`` everywhere: 1 for a map that knows nothing, higher the better it ranks errors."""
    u, e = np.asarray(uncertainty).ravel(), np.asarray(error, np.float64).ravel()
    if u.shape != e.shape or u.size == 0:
        raise ValueError(f"map and error must have the same non-empty shape; got {u.shape} and {e.shape}")
    order = np.argsort(u, kind="stable")[::-1]
    top = order[: max(1, round(fraction * u.size))]
    return float(e[top].mean() / max(e.mean(), 1e-12))
