"""Decoding an attention-free niiv model on a separable grid (rows x columns), as views need it.

Bilinear interpolation is separable and the decoder's first layer is linear, so they commute: the
first layer is applied where there are fewest points (the grid pixels read, after interpolating
rows, or at the outputs), the interpolation is two 1-D passes over contiguous rows, and the
positional encoding's share of the first layer is one term per output row plus one per output
column (the encoding is sin/cos of each coordinate alone). The result equals
:meth:`NiivModel.query <napari_niiv.model.niiv.NiivModel.query>` at every (row, column) pair, up
to float rounding, for a fraction of its gathers and copies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from .decoder import positional_encoding
from .latent_field import AxisLerp, LatentGrid

if TYPE_CHECKING:
    from .niiv import NiivModel

# relu(x @ w.T + b): a caller may pass a fused kernel (the engine does on CPUs)
LinearReLU = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def axis_encoding(model: NiivModel, coords: torch.Tensor, axis: int) -> torch.Tensor:
    """The first decoder layer's response to the positional encoding of one coordinate axis
    (0: rows, 1: columns) -> (n, hidden), fp32: its columns of
    :func:`~napari_niiv.model.decoder.positional_encoding`, which lays out [sin r, sin c, cos r, cos c]
    per band."""
    bands, base = model.config.pe_bands, model.config.latent_dim + 1
    mine = [4 * k + j + axis for k in range(bands) for j in (0, 2)]  # this axis' sin and cos
    pe = positional_encoding(coords.float()[:, None].expand(-1, 2), bands)[:, mine]
    weight = model.decoder.net[0].weight.float()[:, [base + i for i in mine]]
    with torch.autocast(coords.device.type, enabled=False):
        return pe @ weight.T


# Largest projected grid kept for a whole decoding (bytes); beyond it each chunk projects its own rows.
PROJECTED_BYTES = 64 * 2**20
# Widest first layer whose row interpolation runs in fp32 (see SeparableDecoding._interpolate_rows).
FP32_LERP_MAX_HIDDEN = 128


class SeparableDecoding:
    """One latent grid decoded at the output ``rows`` x ``cols``, a range of rows at a time
    (:meth:`decode`): a caller decodes in chunks, to cancel between them and bound memory.

    What the chunks share is prepared once: the column interpolation, the encoding terms of every
    row and column, the weights cast to ``dtype`` (bf16/fp16; None: fp32) and, in the common case
    (outputs at the input's column spacing, more output rows than grid rows), the first layer
    applied to every grid row the rows read.
    """

    def __init__(
        self,
        model: NiivModel,
        grid: LatentGrid,
        rows: torch.Tensor,
        cols: torch.Tensor,
        dtype: torch.dtype | None,
        linear_relu: LinearReLU | None = None,
    ) -> None:
        if model.attention is not None:
            raise ValueError("separable decoding needs a model without attention (it refines each point)")
        self.dtype = dtype or torch.float32
        feats = grid.features_last()  # (B, h, w, C + 1)
        self.height = feats.shape[1]
        self.rows = rows
        self.along_c = AxisLerp.at(cols, feats.shape[2])
        self.feats = self.along_c.select(feats, 2)
        self.n_cols = cols.numel()
        net = model.decoder.net
        first = net[0]
        self.w_first = first.weight[:, : model.config.latent_dim + 1].to(self.dtype)
        self.row_term32 = axis_encoding(model, rows, 0)  # (R, hidden), fp32
        self.row_term = self.row_term32.to(self.dtype)
        self.col_term = (axis_encoding(model, cols, 1) + first.bias.float()).to(self.dtype)  # (C, hidden)
        self.layers = [
            (m.weight.to(self.dtype), m.bias.to(self.dtype)) for m in net[2:-1] if isinstance(m, torch.nn.Linear)
        ]
        self.decoder = model.decoder
        self.linear_relu = linear_relu or (lambda x, w, b: F.linear(x, w, b).relu_())
        # the first layer on every grid row read, once, with the column term added (interpolation
        # weights sum to one, so a per-column constant passes through the row interpolation)
        self.projected: torch.Tensor | None = None
        self.projected_rows: torch.Tensor | None = None
        if self.along_c.exact:
            whole = AxisLerp.at(rows, self.height)
            n = whole.need.numel()
            size = feats.shape[0] * n * self.feats.shape[2] * self.w_first.shape[0] * self.w_first.element_size()
            if n < rows.numel() and size <= PROJECTED_BYTES:
                with torch.autocast(feats.device.type, enabled=False):
                    self.projected = self._project(whole.select(self.feats, 1)).add_(self.col_term)
                self.projected_rows = whole.need

    def decode(self, start: int, stop: int) -> torch.Tensor:
        """Intensities at output rows ``start:stop`` x the columns -> (B, stop - start, C), float32."""
        rows = self.rows[start:stop]
        along_r = AxisLerp.at(rows, self.height)
        sub = along_r.select(self.feats, 1)  # (B, nr, nc, C + 1), fp32
        with torch.autocast(sub.device.type, enabled=False):
            if self.projected is not None:
                assert self.projected_rows is not None
                at = torch.searchsorted(self.projected_rows, along_r.need)
                x = self._interpolate_rows(along_r.select_from(self.projected, at, 1), along_r, start, stop)
            elif self.along_c.exact and sub.shape[1] <= rows.numel():  # fewer grid rows than outputs: project them
                x = self._interpolate_rows(self._project(sub).add_(self.col_term), along_r, start, stop)
            else:
                x = self._first_layer(sub, along_r, start, stop)
            x = x.relu_().to(self.dtype)
            for weight, bias in self.layers:
                x = self.linear_relu(x, weight, bias)
            return self.decoder.output(x, self.along_c.apply(along_r.apply(sub[..., -1], 1), 2))

    def _interpolate_rows(self, grid: torch.Tensor, along_r: AxisLerp, start: int, stop: int) -> torch.Tensor:
        """Projected grid rows (B, nr, C, hidden), column term included -> the first layer's
        pre-activation at the outputs: one matmul that interpolates, and the row term. Called
        inside :meth:`decode`'s autocast-free block.

        Its inner size is the few grid rows read (about 3). For narrow layers the matmul runs in
        fp32 whatever ``dtype``: oneDNN's bf16 batched matmul of that shape ran 4x slower than fp32
        on an AMX CPU (2.6 ms against 0.6 ms for 17 rows of a 1920-wide view, hidden 64), and the
        rows read are few, so their cast is cheap. For wider ones (niiv-em's 256) the fp32 result
        is 2x the bytes to pass over and that was 10 % slower, so they stay in ``dtype``. The
        result is cast to ``dtype`` after the ReLU in :meth:`decode`."""
        b, nr, nc, hidden = grid.shape
        n = stop - start
        if hidden <= FP32_LERP_MAX_HIDDEN:
            lerp = along_r.matrix(torch.float32)
            x = torch.matmul(lerp, grid.reshape(b, nr, -1).float()).view(b, n, nc, hidden)
            return x.add_(self.row_term32[start:stop][None, :, None])
        x = self.row_term[start:stop][None, :, None].expand(b, n, nc, hidden).contiguous()
        lerp = along_r.matrix(self.dtype).expand(b, -1, -1)
        return x.view(b, n, -1).baddbmm_(lerp, grid.reshape(b, nr, -1)).view(b, n, nc, hidden)

    def _first_layer(self, sub: torch.Tensor, along_r: AxisLerp, start: int, stop: int) -> torch.Tensor:
        """The first layer's pre-activation at the outputs, projected where fewest points are: the
        grid read, after interpolating rows, or at the outputs."""
        nr, nc, n_rows = sub.shape[1], sub.shape[2], stop - start
        stage = min((nr * nc, 0), (n_rows * nc, 1), (n_rows * self.n_cols, 2))[1]
        x = self._project(sub) if stage == 0 else sub
        x = along_r.apply(x, 1)
        x = self._project(x) if stage == 1 else x
        x = self.along_c.apply(x, 2)
        x = self._project(x) if stage == 2 else x
        # x is a fresh tensor of self.dtype here (a projection or an interpolation of one)
        return x.add_(self.row_term[start:stop][:, None]).add_(self.col_term)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.dtype), self.w_first)
