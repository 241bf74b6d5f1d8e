"""EDSR feature encoder: a low-resolution slice in, a latent grid at the same resolution out."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

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


class ConvWeights(NamedTuple):
    """A 3x3 convolution's weight and bias, as a layer has them (the head's bias with the
    acquisition shift folded in)."""

    weight: torch.Tensor
    bias: torch.Tensor | None


# A replicate-padded 3x3 convolution by a layer's weights, plus ``add`` when given, then the ReLU
# when asked: a caller may pass a fused kernel (the engine does on CPUs) to run the encoder with
# each block's ReLU and skip riding on its convolutions (inference only). ``add`` is given up: the
# kernel may write its result into it.
Conv = Callable[[torch.Tensor, "nn.Conv2d | ConvWeights", bool, "torch.Tensor | None"], torch.Tensor]


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


# The acquisition codes: log2(alpha / ALPHA_CENTRE), 0 in the middle of the 2-12 range a model is
# trained over and +-1.3 at its ends (linear in log alpha beyond); and the section's thickness as a
# fraction of its spacing, minus one half: +0.5 for thick sections, about -0.4 for thin ones.
ALPHA_CENTRE = math.sqrt(2.0 * 12.0)


def acquisition_codes(alpha: float, thickness: float | None) -> tuple[float, float]:
    """The two numbers :class:`AcquisitionShift` scales its vectors by; ``thickness`` in xy voxels
    (None: as thick as the spacing, ``alpha``)."""
    alpha = float(alpha)
    extent = alpha if thickness is None else float(thickness)
    return math.log2(alpha / ALPHA_CENTRE), extent / alpha - 0.5


class AcquisitionShift(nn.Module):
    """A learned per-channel shift of the head's features by how the input was acquired: alpha (how
    far apart its rows are) and the sections' thickness (box-averaged thick sections or thin ones
    far apart), which a model trained over a range of both otherwise has to guess from the image.
    Zero at initialisation, so adding it to trained weights changes nothing."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.thickness = nn.Parameter(torch.zeros(channels))

    def shift(self, alpha: float, thickness: float | None) -> torch.Tensor:
        """The per-channel shift, (C,)."""
        a, t = acquisition_codes(alpha, thickness)
        return self.alpha * a + self.thickness * t

    def forward(self, x: torch.Tensor, alpha: float, thickness: float | None) -> torch.Tensor:
        return x + self.shift(alpha, thickness).to(x.dtype).view(1, -1, 1, 1)


class EDSREncoder(nn.Module):
    """EDSR without upsampler and mean shift: head conv, residual blocks, tail conv, global skip;
    with ``acquisition_embedding`` the head's features are shifted by :class:`AcquisitionShift`,
    so both the body and (through the global skip) the decoder know how the input was acquired."""

    def __init__(self, channels: int = 64, blocks: int = 6, acquisition_embedding: bool = False) -> None:
        super().__init__()
        self.head = _conv(1, channels)
        self.acquisition = AcquisitionShift(channels) if acquisition_embedding else None
        self.body = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)], _conv(channels, channels))

    def forward(
        self, image: torch.Tensor, alpha: float, thickness: float | None = None, conv: Conv | None = None
    ) -> torch.Tensor:
        """(B, 1, h, w) intensities in [0, 1], ``alpha`` isotropic voxels per input row, sections
        ``thickness`` xy voxels thick (None: ``alpha``) -> (B, C, h, w) latents. With ``conv`` the
        same network runs through that kernel (:data:`Conv`), in its precision."""
        if conv is not None:
            return self._forward_with(conv, image, alpha, thickness)
        head = self.head(image)
        if self.acquisition is not None:
            head = self.acquisition(head, alpha, thickness)
        return head + self.body(head)

    def _forward_with(self, conv: Conv, image: torch.Tensor, alpha: float, thickness: float | None) -> torch.Tensor:
        """:meth:`forward` with each ReLU fused into the convolution before it and each skip
        into the convolution that ends its block: a pass over the activations fewer per layer."""
        head_layer: nn.Conv2d | ConvWeights = self.head
        if self.acquisition is not None:  # per channel, so it rides on the head's bias: no pass over the head
            shift = self.acquisition.shift(alpha, thickness)
            bias = shift if self.head.bias is None else self.head.bias + shift
            head_layer = ConvWeights(self.head.weight, bias)
        head = conv(image, head_layer, False, None)
        x = head
        for block in self.body[:-1]:
            assert isinstance(block, ResBlock)
            # each block's input is given up to its skip, but the head's is kept for the global one
            skip = x.clone(memory_format=torch.channels_last) if x is head else x
            x = conv(conv(x, block.body[0], True, None), block.body[2], False, skip)
        return conv(x, self.body[-1], False, head)
