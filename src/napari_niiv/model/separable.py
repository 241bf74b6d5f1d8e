"""Decoding an attention-free niiv model on a separable grid (rows x columns), as views need it.

Bilinear interpolation is linear and so is the decoder's first layer, and the positional encoding
is sin/cos of each coordinate alone. So an output row that lies between grid rows ``i`` and
``i + 1`` at weight ``t`` gets its first-layer pre-activation from one matmul on the two grid rows
side by side, ``[row i, row i+1, column encoding] @ [(1 - t) W, t W, W_col]``, with the row's own
encoding folded into the bias. The output rows that share a pair of grid rows (``alpha`` of them
at scale 1) share that input, so their weights are stacked into one wider layer: the first layer
is one matmul per pair, in the matmuls' precision, with its bias and ReLU fused, and no full-size
fp32 pre-activation is ever written (interpolating projected rows in fp32, as before, spent ~60 %
of a 1080p niiv-fast frame passing over it). The result equals
:meth:`NiivModel.query <napari_niiv.model.niiv.NiivModel.query>` at every (row, column) pair, up
to float rounding.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from .decoder import positional_encoding
from .latent_field import AxisLerp, LatentGrid

if TYPE_CHECKING:
    from .niiv import NiivModel

# x @ w.T (+ b when given), then the ReLU when asked: a caller may pass a fused kernel (the engine
# does on CPUs)
Linear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, bool], torch.Tensor]
# fn(item) for every item, in any order, possibly at once on several threads (the engine's core
# workers on CPUs); returns when all are done
Parallel = Callable[[Callable[[Any], None], Sequence[Any]], None]
# Stacked first-layer weights kept per decoding, by the rows' interpolation fractions
STACKS_KEPT = 8


def plain_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, relu: bool) -> torch.Tensor:
    y = F.linear(x, w, b)
    return y.relu_() if relu else y


def in_turn(fn: Callable[[Any], None], items: Sequence[Any]) -> None:
    for item in items:
        fn(item)


def axis_encoding(model: NiivModel, coords: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The positional encoding of one coordinate axis (0: rows, 1: columns) -> (n, 2 * bands),
    and the first decoder layer's columns that read it -> (hidden, 2 * bands), both fp32.
    :func:`~napari_niiv.model.decoder.positional_encoding` lays out [sin r, sin c, cos r, cos c]
    per band."""
    bands, base = model.config.pe_bands, model.config.latent_dim + 1
    mine = [4 * k + j + axis for k in range(bands) for j in (0, 2)]  # this axis' sin and cos
    pe = positional_encoding(coords.float()[:, None].expand(-1, 2), bands)[:, mine]
    return pe, model.decoder.net[0].weight.float()[:, [base + i for i in mine]]


class SeparableDecoding:
    """One latent grid decoded at the output ``rows`` x ``cols``, a range of rows at a time
    (:meth:`decode`): a caller decodes in chunks, to cancel between them and bound memory.

    Prepared once: the grid rows the outputs read, interpolated to the output columns (in latent
    space, where there are fewest channels) and cast to ``dtype`` (bf16/fp16; None: fp32); each
    row's encoding term; the weights in ``dtype``. A run of rows decoded at once holds at most
    ``points`` points (at least one row), to bound its activations. The runs are independent:
    ``parallel`` may decode them at once (each writes its own rows of the output).
    """

    def __init__(
        self,
        model: NiivModel,
        grid: LatentGrid,
        rows: torch.Tensor,
        cols: torch.Tensor,
        dtype: torch.dtype | None,
        linear: Linear | None = None,
        points: int | None = None,
        parallel: Parallel | None = None,
    ) -> None:
        if model.attention is not None:
            raise ValueError("separable decoding needs a model without attention (it refines each point)")
        self.dtype = dtype or torch.float32
        feats = grid.features_last()  # (B, h, w, C + 1)
        along_r, along_c = AxisLerp.at(rows, feats.shape[1]), AxisLerp.at(cols, feats.shape[2])
        read = along_c.apply(along_c.select(along_r.select(feats, 1), 2), 2)  # (B, rows read, cols, C + 1)
        # fp32, contiguous: the residual's bilinear value, without holding the fp32 grid read
        self.values = read[..., -1].contiguous()
        self.inputs = read.to(self.dtype)
        self.lo, self.hi, self.weight = along_r.lo.tolist(), along_r.hi.tolist(), along_r.weight
        first = model.decoder.net[0]
        row_pe, w_row = axis_encoding(model, rows, 0)
        col_pe, self.w_col = axis_encoding(model, cols, 1)
        self.row_bias = row_pe @ w_row.T + first.bias.float()  # (R, hidden)
        self.col_pe = col_pe.to(self.dtype)
        self.w_lat = first.weight.float()[:, : model.config.latent_dim + 1]
        self.hidden = first.out_features
        self.layers = [
            (m.weight.to(self.dtype), m.bias.to(self.dtype))
            for m in model.decoder.net[2:-1]
            if isinstance(m, torch.nn.Linear)
        ]
        self.decoder = model.decoder
        self.w_out = model.decoder.net[-1].weight.to(self.dtype)
        self.linear = linear or plain_linear
        self.parallel = parallel or in_turn
        self.run_rows = max(1, points // (self.inputs.shape[0] * cols.numel())) if points else rows.numel()
        self._stacks: OrderedDict[tuple[float, ...], torch.Tensor] = OrderedDict()
        self._stacks_lock = threading.Lock()  # runs may be decoded on several threads at once

    def decode(self, start: int, stop: int, cancelled: Callable[[], bool] | None = None) -> torch.Tensor | None:
        """Intensities at output rows ``start:stop`` x the columns -> (B, stop - start, C), float32;
        None once ``cancelled()`` is true (asked before each run: a block of a save is seconds of
        runs, and stopping between them leaves every run's arithmetic as it is)."""
        b, n_cols = self.inputs.shape[0], self.inputs.shape[2]
        out = torch.empty(b, stop - start, n_cols, dtype=torch.float32, device=self.inputs.device)
        stopped = cancelled or (lambda: False)

        def run(rows: tuple[int, int]) -> None:
            if stopped():
                return
            s, e = rows
            with torch.autocast(self.inputs.device.type, enabled=False):
                out[:, s - start : e - start] = self._decode_run(s, e).transpose(1, 2)

        self.parallel(run, list(self._runs(start, stop)))
        return None if stopped() else out

    def _runs(self, start: int, stop: int) -> Iterator[tuple[int, int]]:
        """(start, stop) of each run: rows between the same two grid rows, at most ``run_rows``."""
        s = start
        while s < stop:
            e, end = s + 1, min(stop, s + self.run_rows)
            while e < end and self.lo[e] == self.lo[s] and self.hi[e] == self.hi[s]:
                e += 1
            yield s, e
            s = e

    def _stacked(self, start: int, stop: int) -> torch.Tensor:
        """The first layer's weights for rows ``start:stop``, stacked: each row's interpolation
        weights folded into the latent weights. Runs between other grid rows at the same fractions
        (every interval of an xz view at an integer alpha) share them: made once, kept for the
        last ``STACKS_KEPT`` fractions."""
        t = self.weight[start:stop]
        key = tuple(t.tolist())
        with self._stacks_lock:
            w = self._stacks.get(key)
        if w is None:
            t = t[:, None, None]
            n = stop - start
            w = torch.cat(((1 - t) * self.w_lat, t * self.w_lat, self.w_col.expand(n, -1, -1)), dim=-1)
            w = w.reshape(n * self.hidden, -1).to(self.dtype)
            with self._stacks_lock:
                self._stacks[key] = w
                while len(self._stacks) > STACKS_KEPT:
                    self._stacks.popitem(last=False)
        return w

    def _decode_run(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop``, all between grid rows ``lo`` and ``hi`` -> (B, C, rows): points in
        (column, row) order, the order the stacked first layer writes them."""
        lo, hi, n = self.lo[start], self.hi[start], stop - start
        b, n_cols = self.inputs.shape[0], self.inputs.shape[2]
        cols_pe = self.col_pe.expand(b, n_cols, -1)
        x = torch.cat((self.inputs[:, lo], self.inputs[:, hi], cols_pe), dim=-1).reshape(b * n_cols, -1)
        bias = self.row_bias[start:stop].reshape(-1).to(self.dtype)
        x = self.linear(x, self._stacked(start, stop), bias, True).reshape(-1, self.hidden)
        for weight, layer_bias in self.layers:
            x = self.linear(x, weight, layer_bias, True)
        correction = self.linear(x, self.w_out, None, False).view(b, n_cols, n)
        t = self.weight[start:stop].view(1, 1, n)
        value = torch.lerp(self.values[:, lo, :, None], self.values[:, hi, :, None], t)  # (B, C, rows)
        return self.decoder.finish(correction, value)
