"""The niiv network in pure torch: no files, no napari."""

from .config import NiivConfig
from .latent_field import LatentGrid
from .niiv import NiivModel

__all__ = ["LatentGrid", "NiivConfig", "NiivModel"]
