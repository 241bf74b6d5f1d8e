"""Which shipped weights suit a volume, from what is known of it: its xy voxel size in physical
units (electron microscopy images at a few nm, light microscopy at a hundred or more), else its
pixel type. A suggestion with its reason, never a decision: the user can always pick others."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.io import NGFF_LENGTH_UNITS, ngff_unit

EM_WEIGHTS = "niiv-em"
LM_WEIGHTS = "niiv-lm"
# xy voxels finer than this are electron microscopy, coarser than LM_FROM_NM light microscopy.
EM_BELOW_NM = 40.0
LM_FROM_NM = 80.0


@dataclass(frozen=True)
class Suggestion:
    weights: str
    reason: str


def suggest_weights(voxel_size: tuple[float, ...], unit: str | None, dtype: object) -> Suggestion:
    """The weights for a (z, y, x) volume of ``voxel_size`` in ``unit`` (None: not known) and ``dtype``."""
    name = ngff_unit(unit)
    if name is not None and name in NGFF_LENGTH_UNITS:
        nm = float(voxel_size[-1]) * NGFF_LENGTH_UNITS[name] * 1e9
        if nm < EM_BELOW_NM:
            return Suggestion(EM_WEIGHTS, f"xy voxels of {nm:.3g} nm: electron microscopy")
        if nm >= LM_FROM_NM:
            return Suggestion(LM_WEIGHTS, f"xy voxels of {nm:.3g} nm: light microscopy")
        size = f"xy voxels of {nm:.3g} nm (between EM and light microscopy), "
    else:
        size = "no physical voxel size, "
    kind = np.dtype(dtype)  # type: ignore[call-overload]
    if kind == np.uint8:
        return Suggestion(EM_WEIGHTS, size + "8-bit pixels as electron microscopes write them")
    if kind.kind in "ui" and kind.itemsize >= 2:
        return Suggestion(LM_WEIGHTS, size + f"{kind.itemsize * 8}-bit pixels as light-microscope cameras write them")
    return Suggestion(EM_WEIGHTS, size + f"{kind} pixels: the default")


def alpha_fit_note(trained: tuple[float, float] | None, alpha: float) -> str | None:
    """What to say of weights trained over the alphas ``trained`` (None: not known) used at
    ``alpha``: nothing within that range, a warning outside it."""
    if trained is None:
        return None
    lo, hi = trained
    if lo - 1e-6 <= alpha <= hi + 1e-6:
        return None
    span = f"alpha {lo:g}" if lo == hi else f"alpha {lo:g} to {hi:g}"
    return f"trained for {span}, used here at {alpha:g}: expect less than its card says"
