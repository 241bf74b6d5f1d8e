"""Per-pixel MLP decoder and the positional encoding it reads."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn


def positional_encoding(coords: torch.Tensor, bands: int) -> torch.Tensor:
    """sin/cos of 2^k * 2*pi*p for k < bands, per coordinate: (..., 2) -> (..., 4 * bands).

    ``p`` is in input pixel units, so every band has a period of one input pixel: this is the
    encoding of the offset to the nearest latent centre (as in LIIF), continuous across pixel
    borders, and identical for the same voxel whatever tile or crop it is decoded in (upstream
    encodes the absolute position in the slice, which ties it to one slice size and breaks tiles).
    """
    feats = []
    for k in range(bands):
        angle = coords * (2.0 * math.pi * 2**k)
        feats.extend((torch.sin(angle), torch.cos(angle)))
    return torch.cat(feats, dim=-1) if feats else coords.new_zeros((*coords.shape[:-1], 0))


class MLPDecoder(nn.Module):
    """[latent, bilinear value, encoding] -> intensity in (0, 1).

    With ``residual`` the MLP predicts a correction to the bilinear value in logit space, so the
    output still passes through the paper's sigmoid but an untrained model starts at bilinear
    interpolation; on a 2-core CPU this is what makes training converge in minutes.
    """

    def __init__(self, inputs: int, hidden: int = 256, layers: int = 5, residual: bool = True) -> None:
        super().__init__()
        dims = [inputs] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            mods += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        mods.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*mods)
        self.residual = residual
        if residual:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``features`` (..., inputs), ``value`` (...) -> (...)."""
        return self.output(self.net[:-1](features), value)

    def output(self, hidden: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations (..., hidden) -> intensities (...): the last layer,
        then :meth:`finish`.

        Under bf16/fp16 the last layer's products are summed in fp32 by the matmul and rounded
        once, to the correction's own precision (relative 2^-9 in bf16). Casting the activations
        to fp32 first, as before, copied them all and then ran an fp32 matmul: a tenth of a small
        model's decoding time.
        """
        last = self.net[-1]
        with torch.autocast(hidden.device.type, enabled=False):
            return self.finish(nn.functional.linear(hidden, last.weight.to(hidden.dtype)).squeeze(-1), value)

    def finish(self, correction: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """The last layer's products without its bias (...) -> intensities (...): the bias, the
        residual and the sigmoid, in fp32, because in bf16 the output itself would be rounded to
        steps of 1/256 near 0.5 (also the end of
        :class:`~napari_niiv.model.separable.SeparableDecoding`, which runs the layers before it)."""
        with torch.autocast(correction.device.type, enabled=False):
            out = correction.float() + self.net[-1].bias.float()
            if self.residual:
                out = out + torch.logit(value.float().clamp(1e-3, 1.0 - 1e-3))
            return torch.sigmoid(out)
