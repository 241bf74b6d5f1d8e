"""The niiv network in pure torch: no files, no napari."""

from __future__ import annotations

from typing import Any

__all__ = ["LatentGrid", "NiivConfig", "NiivModel"]


def __getattr__(name: str) -> Any:
    """Lazy re-exports: ``model.config`` (the choice of architectures) is importable without torch."""
    if name == "NiivConfig":
        from .config import NiivConfig

        return NiivConfig
    if name == "LatentGrid":
        from .latent_field import LatentGrid

        return LatentGrid
    if name == "NiivModel":
        from .niiv import NiivModel

        return NiivModel
    raise AttributeError(name)
