"""EDSR feature encoder: a low-resolution slice in, a latent grid at the same resolution out."""

from __future__ import annotations

import torch
from torch import nn


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    # Replicate padding: the thin z axis of an anisotropic slice (often <= 16 rows) is mostly
    # border, and zero padding would teach the encoder a dark frame that tiles cannot reproduce.
    return nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="replicate")


class ResBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3 with an identity skip (EDSR, res_scale 1, no batch norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels), nn.ReLU(inplace=True), _conv(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EDSREncoder(nn.Module):
    """EDSR without upsampler and mean shift: head conv, residual blocks, tail conv, global skip."""

    def __init__(self, channels: int = 64, blocks: int = 6) -> None:
        super().__init__()
        self.head = _conv(1, channels)
        self.body = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)], _conv(channels, channels))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) intensities in [0, 1] -> (B, C, h, w) latents."""
        head = self.head(image)
        return head + self.body(head)
