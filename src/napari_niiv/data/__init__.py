"""Volumes in: reading, voxel sizes, normalisation, degradation and training pairs; no models, no napari.

Submodules are imported where used (``from napari_niiv.data.io import open_volume``): importing
this package stays cheap (no torch), which keeps ``niiv --help`` fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "Batch": "pairs",
    "LateralPairSampler": "pairs",
    "Normalisation": "normalise",
    "fit_normalisation": "normalise",
    "Volume": "io",
    "as_volume": "io",
    "check_volume": "io",
    "open_volume": "io",
    "check_alpha": "degrade",
    "pool_axis": "degrade",
    "Degradation": "degrade",
    "parse_degradations": "degrade",
    "pooling_matrix": "degrade",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(name)
