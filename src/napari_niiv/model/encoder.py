"""EDSR feature encoder: a low-resolution slice in, a latent grid at the same resolution out."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def replicate_pad(x: torch.Tensor) -> torch.Tensor:
    """One pixel of replicate padding on each side of (B, C, h, w), in ``x``'s memory format.

    torch's own replication pad returns channels-last input as NCHW, which the next convolution
    converts back: on a CPU the pad and the copy took a third of the encoder's time. Same values."""
    if not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        return F.pad(x, (1, 1, 1, 1), mode="replicate")
    b, c, h, w = x.shape
    out = torch.empty((b, c, h + 2, w + 2), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    out[:, :, 1:-1, 1:-1] = x
    out[:, :, :1, 1:-1] = x[:, :, :1]
    out[:, :, -1:, 1:-1] = x[:, :, -1:]
    out[:, :, :, :1] = out[:, :, :, 1:2]
    out[:, :, :, -1:] = out[:, :, :, -2:-1]
    return out


class ReplicateConv(nn.Conv2d):
    """3x3 convolution with replicate padding: the thin z axis of an anisotropic slice (often
    <= 16 rows) is mostly border, and zero padding would teach the encoder a dark frame that tiles
    cannot reproduce. Same parameters (and weights files) as ``nn.Conv2d(..., padding_mode="replicate")``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 3, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(replicate_pad(x), self.weight, self.bias)


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return ReplicateConv(c_in, c_out)


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
