"""The assembled niiv network: encode a low-resolution slice once, query it anywhere."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .config import NiivConfig
from .decoder import MLPDecoder, positional_encoding
from .encoder import EDSREncoder
from .latent_field import LatentGrid, LocalAttention, sample_bilinear
from .separable import SeparableDecoding


class NiivModel(nn.Module):
    """Neural implicit isotropic volume model (Troidl et al.), device-agnostic pure torch.

    Inputs are normalised intensities in [0, 1]; rows of a slice are the anisotropic axis, and
    ``alpha`` is how many isotropic voxels one input row spans, ``thickness`` how many xy voxels
    thick its sections are (None: as thick as their spacing; used by models with
    ``acquisition_embedding``, ignored by the others).
    """

    def __init__(self, config: NiivConfig | None = None) -> None:
        super().__init__()
        self.config = config or NiivConfig()
        c = self.config
        self.encoder = EDSREncoder(c.latent_dim, c.encoder_blocks, c.acquisition_embedding)
        self.attention = LocalAttention(c.latent_dim, c.attention_radius, c.attention_spacing) if c.attention else None
        self.decoder = MLPDecoder(c.decoder_inputs, c.mlp_hidden, c.mlp_layers, c.residual)

    def encode(self, image: torch.Tensor, alpha: float, thickness: float | None = None) -> LatentGrid:
        """(B, 1, h, w) low-resolution slices -> latent grid ready for queries."""
        latents = self.encoder(image, alpha, thickness)
        kv = self.attention.project_grid(latents) if self.attention is not None else None
        return LatentGrid(latents=latents, image=image, keys_values=kv, step=(1.0 / float(alpha), 1.0))

    def query(self, grid: LatentGrid, coords: torch.Tensor) -> torch.Tensor:
        """Intensities at ``coords`` (B, N, 2) (row, col in input pixel units) -> (B, N), in one pass:
        training's batches. Inference decodes many points through
        :class:`~napari_niiv.inference.engine.InferenceEngine`, which chunks them."""
        return self.decode_points(*self.gather(grid, coords), coords)

    def gather(self, grid: LatentGrid, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """What a query reads from the grid at ``coords`` (B, N, 2): the interpolated latent (B, N, C),
        the keys and values of its neighbours (B, N, K, 2C) and the bilinear input value (B, N)."""
        sampled = sample_bilinear(grid.with_image(), coords)
        latent, value = sampled[..., :-1], sampled[..., -1]
        kv = self.attention.gather(grid, coords) if self.attention is not None else None
        return latent, kv, value

    def decode_points(
        self, latent: torch.Tensor, kv: torch.Tensor | None, value: torch.Tensor, coords: torch.Tensor
    ) -> torch.Tensor:
        """Per-point work after the gathers: attention, encoding, MLP. Points are independent, so this
        takes any leading shape, and a fixed one is what torch.compile specialises on."""
        if self.attention is not None and kv is not None:
            latent = self.attention(latent, kv)
        pe = positional_encoding(coords, self.config.pe_bands).to(latent.dtype)
        features = torch.cat((latent, value.unsqueeze(-1).to(latent.dtype), pe), dim=-1)
        return self.decoder(features, value)

    def decode_separable(self, grid: LatentGrid, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Intensities on the grid ``rows`` x ``cols`` (1-D coordinates) -> (B, R, C): :meth:`query`
        at every (row, col) pair for models without attention, with far fewer gathers and copies
        (:class:`~napari_niiv.model.separable.SeparableDecoding`)."""
        decoded = SeparableDecoding(self, grid, rows, cols, None).decode(0, rows.numel())
        assert decoded is not None  # (None only when cancelled)
        return decoded

    def with_acquisition_embedding(self) -> NiivModel:
        """A copy that is also told alpha and the section thickness, with the embedding at zero: the
        same outputs until it is trained (how a model trained without it is continued with it)."""
        if self.config.acquisition_embedding:
            raise ValueError("this model already has an acquisition embedding")
        model = NiivModel(replace(self.config, acquisition_embedding=True))
        missing, unexpected = model.load_state_dict(self.state_dict(), strict=False)
        assert not unexpected and sorted(missing) == ["encoder.acquisition.alpha", "encoder.acquisition.thickness"]
        return model.to(next(self.parameters()).device).train(self.training)

    def forward(
        self, image: torch.Tensor, coords: torch.Tensor, alpha: float, thickness: float | None = None
    ) -> torch.Tensor:
        return self.query(self.encode(image, alpha, thickness), coords)
