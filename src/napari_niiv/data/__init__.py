"""Volumes in, normalised training pairs and degraded slices out; no torch models, no napari."""

from .degrade import check_alpha, pool_axis, pooling_matrix
from .io import Volume, as_volume, check_volume, open_volume
from .normalise import Normalisation, fit_normalisation
from .pairs import Batch, LateralPairSampler

__all__ = [
    "Batch",
    "LateralPairSampler",
    "Normalisation",
    "Volume",
    "as_volume",
    "check_alpha",
    "check_volume",
    "fit_normalisation",
    "open_volume",
    "pool_axis",
    "pooling_matrix",
]
