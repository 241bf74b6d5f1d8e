"""Inference engine: a trained model run as fast as the hardware allows, within a stated tolerance.

- Reduced precision: bf16 autocast on CPUs with AVX-512 BF16 / AMX and on CUDA GPUs that have it,
  fp16 on other GPUs (``precision="auto"``); ``"fp32"`` switches it off. The measured cost is in
  ``benchmarks/bench_inference.py`` (well under 0.05 dB CF-PSNR on held-out FIB-SEM).
- Points are decoded in chunks of one fixed size (``CHUNK_POINTS``): every tensor of a chunk stays
  below glibc's 32 MB mmap threshold, so memory is reused instead of returned to the OS and
  faulted back in for every chunk, and the compiled decoder sees one shape only.
- ``compiled=True`` runs the per-point work (attention, encoding, MLP) through torch.compile,
  specialised to that one chunk shape, so it compiles once per process; inductor's on-disk cache
  (``torchinductor`` in the platform's user cache folder) makes later processes reuse the compiled code.
- Attention-free models (v1, niiv-fast) decode separable grids through
  :class:`~napari_niiv.model.separable.SeparableDecoding` (the first layer is one matmul per pair
  of grid rows, for all the output rows between them: no gathers, no fp32 pre-activations), from a
  channels-last feature grid the encoder writes in one pass.
- Encoder latents and the attention's keys and values are computed once per slice
  (:meth:`encode`); the caller keeps the grid and decodes any points from it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from ..model import NiivModel
from ..model.latent_field import LatentGrid, sample_bilinear
from ..model.separable import SeparableDecoding
from .devices import autocast_dtype, core_workers, fused_conv, fused_linear, pick_device, precision_name
from .settings import InferenceSettings

# Points per decoded chunk: the neighbours' keys and values (points x 9 x 128 values) are 19 MB
# in fp32, the MLP activations 4 MB; measured as fast as larger chunks, without the churn.
CHUNK_POINTS = 4096
# Most points in one run of separable decoding (the output rows between two grid rows: alpha
# rows of a view at scale 1, more when zoomed in) for a 256-wide MLP, twice as many for narrower
# ones: a run's activations stay at a few MB.
SEPARABLE_POINTS = 16384
# The widest MLP whose runs of separable decoding are decoded one per core at once (CoreWorkers)
PARALLEL_RUNS_HIDDEN = 64
# Input columns per encoder pass for wide slices (live views): measured fastest here.
ENCODE_TILE = 512
__all__ = ["CHUNK_POINTS", "ENCODE_TILE", "PARALLEL_RUNS_HIDDEN", "SEPARABLE_POINTS", "InferenceEngine"]


def inductor_cache_dir() -> Path:
    """Where compiled kernels persist between sessions: the user's own TORCHINDUCTOR_CACHE_DIR wins,
    else ``torchinductor`` in the platform's user cache folder (``~/.cache/napari-niiv`` or
    $XDG_CACHE_HOME on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows)."""
    import platformdirs

    base = Path(platformdirs.user_cache_dir("napari-niiv", appauthor=False))
    return Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(base / "torchinductor")))


class InferenceEngine:
    """Encode slices and decode points with one model on one device, in the chosen precision.

    The engine runs its own copy of the model (on its device, in eval mode, channels-last): the
    model it is lent is left as it was, so a training loop or another engine can keep using it.
    """

    def __init__(self, model: NiivModel, settings: InferenceSettings, chunk: int = CHUNK_POINTS) -> None:
        self.settings = settings
        self.sections = settings.sections  # what an acquisition embedding is told, parsed once
        self.device = pick_device(settings.device)
        self.model = copy.deepcopy(model).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        # Channels-last convolutions: oneDNN (and cuDNN under autocast) then skip a layout reorder
        # per layer; ~25% off the encoder here.
        self.model.encoder.to(memory_format=torch.channels_last)
        self.dtype = autocast_dtype(self.device, settings.precision)  # None: fp32
        self._linear = fused_linear(self.device, self.dtype)  # separable decoding's layers
        self._conv = fused_conv(self.device, self.dtype)  # attention-free models' encoder
        # Separable decoding's runs of a narrow MLP (niiv-fast's 48) are many small operations: one
        # run per core at once (1080p niiv-fast frame ~25 % faster on 2 cores). A 256-wide run's
        # operations are long enough to split across the cores themselves (niiv-em's frame 3-8 %
        # slower run by run).
        self._parallel = core_workers(self.device) if model.config.mlp_hidden <= PARALLEL_RUNS_HIDDEN else None
        self.chunk = int(chunk)
        self.compiled = settings.compiled
        self._decode: Any = self.model.decode_points
        if self.compiled:
            inductor_cache_dir()
            self._decode = torch.compile(self.model.decode_points, dynamic=False)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """New weights of the same architecture (a fine-tuning preview), into the engine's copy."""
        self.model.load_state_dict(state)
        self.model.encoder.to(memory_format=torch.channels_last)

    @property
    def precision_name(self) -> str:
        return precision_name(self.dtype)

    def autocast(self) -> AbstractContextManager[Any]:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def encode(self, image: torch.Tensor, alpha: float) -> LatentGrid:
        """(B, 1, h, w) normalised slices -> latent grid (keys and values projected once).

        Wide slices are encoded in column tiles of ``ENCODE_TILE`` with a halo of the encoder's
        receptive radius, which is cropped: the same latents, at ~1.5x the speed of one wide pass
        (the activations of a tile stay in cache).
        """
        grid = self.encode_until(image, alpha, lambda: False)
        assert grid is not None  # (None only when cancelled)
        return grid

    def encode_until(self, image: torch.Tensor, alpha: float, cancelled: Callable[[], bool]) -> LatentGrid | None:
        """:meth:`encode`, or None once ``cancelled()`` is true, asked between column tiles and (the
        CPU's fused kernels of attention-free models) before each convolution: a batch of a save's
        slices took 3.6 s to encode, which a Cancel waited for. The arithmetic is unchanged."""
        try:
            return self._encode_any(image, alpha, cancelled)
        except _Stopped:
            return None

    @torch.inference_mode()
    def _encode_any(self, image: torch.Tensor, alpha: float, cancelled: Callable[[], bool]) -> LatentGrid:
        if self.model.attention is None:
            return self._encode_features(image, alpha, cancelled)
        tiles = self._encode_tiles(image.shape[-1])
        if len(tiles) == 1:
            return self._encode(image, alpha)
        parts = []
        for lo, hi, keep, _ in tiles:
            if cancelled():
                raise _Stopped
            g = self._encode(image[..., lo:hi], alpha)
            parts.append((g.latents[..., keep], None if g.keys_values is None else g.keys_values[..., keep]))
        latents = torch.cat([lat for lat, _ in parts], dim=-1)
        kv = None if parts[0][1] is None else torch.cat([k for _, k in parts], dim=-1)
        return LatentGrid(latents, image.to(self.device), kv, g.step)

    def _encode_features(self, image: torch.Tensor, alpha: float, cancelled: Callable[[], bool]) -> LatentGrid:
        """Attention-free models: each column tile's latents (channels-last, so (B, h, w, C) in
        memory) are written straight into the grid's channels-last feature grid, fp32, with the
        image as the last channel: one pass, where tiling, conversion, concatenation and the
        decoder's layout took four. On CPUs the convolutions carry their ReLU and skip
        (:func:`~napari_niiv.inference.devices.fused_conv`)."""
        b, _, h, width = image.shape
        c = self.model.config.latent_dim
        image = image.to(self.device)
        features = torch.empty(b, h, width, c + 1, dtype=torch.float32, device=self.device)
        features[..., c] = image[:, 0]
        thickness = self.sections.thickness(alpha)
        conv = fused = self._conv
        if fused is not None:

            def conv(x: torch.Tensor, layer: Any, relu: bool, skip: torch.Tensor | None) -> torch.Tensor:
                if cancelled():  # between layers: about 0.1 s apart for a batch of a save's slices
                    raise _Stopped
                return fused(x, layer, relu, skip)

        for lo, hi, keep, out in self._encode_tiles(width):
            if cancelled():
                raise _Stopped
            # the fused kernel runs in the engine's precision itself (autocast would recast its arguments)
            with self.autocast() if conv is None else nullcontext():
                latents = self.model.encoder(
                    image[..., lo:hi].contiguous(memory_format=torch.channels_last), alpha, thickness, conv
                )
            features[:, :, out, :c] = latents.permute(0, 2, 3, 1)[:, :, keep]
        return LatentGrid.from_features(features, image, None, (1.0 / float(alpha), 1.0))

    def _encode_tiles(self, width: int) -> list[tuple[int, int, slice, slice]]:
        """Column tiles of a slice ``width`` wide: (first, last input column encoded, the latents
        kept of that pass, where they go); one tile when the slice is narrow enough."""
        halo = self.model.config.receptive_radius
        tile = width if width <= ENCODE_TILE + 2 * halo else ENCODE_TILE
        tiles = []
        for c0 in range(0, width, tile):
            lo, hi, n = max(0, c0 - halo), min(width, c0 + tile + halo), min(tile, width - c0)
            tiles.append((lo, hi, slice(c0 - lo, c0 - lo + n), slice(c0, c0 + n)))
        return tiles

    def _encode(self, image: torch.Tensor, alpha: float) -> LatentGrid:
        with self.autocast():
            grid = self.model.encode(
                image.to(self.device).contiguous(memory_format=torch.channels_last),
                alpha,
                self.sections.thickness(alpha),
            )
        # Sampling the grid is a gather, not arithmetic: on CPU grid_sample is ~3x slower on bf16
        # than on fp32, so the grid is kept in fp32 (and NCHW) and only the matmuls run in reduced precision.
        kv = None if grid.keys_values is None else grid.keys_values.float().contiguous()
        return LatentGrid(grid.latents.float().contiguous(), image.to(self.device), kv, grid.step)

    @torch.inference_mode()
    def query(
        self, grid: LatentGrid, coords: torch.Tensor, cancelled: Callable[[], bool] | None = None
    ) -> torch.Tensor | None:
        """Intensities (float32) at ``coords`` (B, N, 2), decoded in chunks of ``chunk`` points;
        None once ``cancelled()`` is true (asked between chunks)."""
        b, n = coords.shape[:2]
        per = max(1, self.chunk // b)
        out = torch.empty(b, n, dtype=torch.float32, device=self.device)
        with self.autocast():
            for i in range(0, n, per):
                if cancelled is not None and cancelled():
                    return None
                part = coords[:, i : i + per]
                latent, kv, value = self.model.gather(grid, part)
                out[:, i : i + per] = self._decode_flat(latent, kv, value, part)
        return out

    def _decode_flat(
        self, latent: torch.Tensor, kv: torch.Tensor | None, value: torch.Tensor, coords: torch.Tensor
    ) -> torch.Tensor:
        """Decode (B, n) points as one flat chunk, padded to ``chunk`` points when compiled."""
        lead = coords.shape[:2]
        m = lead.numel()
        if kv is not None:  # one pass: gathered neighbours to the matmuls' dtype, contiguous for them
            kv = kv.to(self.dtype or torch.float32, memory_format=torch.contiguous_format)
        args = [latent.reshape(m, -1), None if kv is None else kv.reshape(m, *kv.shape[2:]), value.reshape(m)]
        flat = coords.reshape(m, 2)
        if self.compiled and m != self.chunk:
            pad = self.chunk - m
            args = [None if a is None else torch.cat((a, a[-1:].expand(pad, *a.shape[1:]))) for a in args]
            flat = torch.cat((flat, flat[-1:].expand(pad, 2)))
        res = self._decode(*args, flat)
        return res[:m].float().reshape(lead)

    def render(self, grid: LatentGrid, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Decode the separable grid ``rows`` x ``cols`` (coordinate vectors) -> (B, R, C) float32."""
        out = self.render_until(grid, rows, cols, lambda: False)
        assert out is not None  # (None only when cancelled)
        return out

    def render_until(
        self, grid: LatentGrid, rows: torch.Tensor, cols: torch.Tensor, cancelled: Callable[[], bool]
    ) -> torch.Tensor | None:
        """:meth:`render`, or None once ``cancelled()`` is true, asked between chunks of points: a
        save's block decodes for seconds, and a Cancel waited for all of it. The chunks are the
        ones :meth:`render` decodes, so a result is the same to the bit."""
        rows, cols = rows.to(self.device, torch.float32), cols.to(self.device, torch.float32)
        if rows.numel() == 0 or cols.numel() == 0:
            return torch.empty(grid.latents.shape[0], rows.numel(), cols.numel(), device=self.device)
        if self.model.attention is None:
            return self._render_separable(grid, rows, cols, cancelled)
        if self._neighbours_on_grid(grid, rows, cols):
            return self._render_shared_neighbours(grid, rows, cols, cancelled)
        coords = _grid_coords(rows, cols, grid.latents.shape[0])
        out = self.query(grid, coords, cancelled)
        return None if out is None else out.reshape(-1, rows.numel(), cols.numel())

    @torch.inference_mode()
    def _render_separable(
        self, grid: LatentGrid, rows: torch.Tensor, cols: torch.Tensor, cancelled: Callable[[], bool]
    ) -> torch.Tensor | None:
        """Attention-free models: :class:`SeparableDecoding`, in runs of at most ``SEPARABLE_POINTS``
        points for a 256-wide MLP (twice as many for narrower ones)."""
        points = SEPARABLE_POINTS * 256 // max(128, self.model.config.mlp_hidden)
        decoding = SeparableDecoding(self.model, grid, rows, cols, self.dtype, self._linear, points, self._parallel)
        return decoding.decode(0, rows.numel(), cancelled)

    def _neighbours_on_grid(self, grid: LatentGrid, rows: torch.Tensor, cols: torch.Tensor) -> bool:
        """True when the output grid is spaced exactly one isotropic voxel apart (scale 1): each
        query's attention neighbours are then the neighbouring queries themselves. An axis with one
        entry (a yz slice of an xz view, a z row of an xy view) qualifies: its neighbours are the
        one-voxel rim the shared path samples anyway (3 samples per query instead of 9)."""
        att = self.model.attention
        if att is None or att.radius != 1 or att.spacing != "output":
            return False
        return all(
            c.numel() < 2 or torch.allclose(c.diff(), torch.full_like(c[1:], step), rtol=0, atol=1e-5)
            for c, step in ((rows, grid.step[0]), (cols, grid.step[1]))
        )

    @torch.inference_mode()
    def _render_shared_neighbours(
        self, grid: LatentGrid, rows: torch.Tensor, cols: torch.Tensor, cancelled: Callable[[], bool]
    ) -> torch.Tensor | None:
        """Scale-1 decoding: keys and values are sampled once per grid point (plus a one-voxel rim),
        not nine times per query, and each query's 3x3 neighbours are read from that sample."""
        assert grid.keys_values is not None
        b, n_cols = grid.latents.shape[0], cols.numel()
        s0, s1 = grid.step
        ext_cols = torch.cat((cols[:1] - s1, cols, cols[-1:] + s1))
        per = max(1, self.chunk // (b * n_cols))  # output rows per chunk
        out = torch.empty(b, rows.numel(), n_cols, dtype=torch.float32, device=self.device)
        with self.autocast():
            for i in range(0, rows.numel(), per):
                if cancelled():
                    return None
                r = rows[i : i + per]
                k = r.numel()
                coords = _grid_coords(r, cols, b)
                sampled = sample_bilinear(grid.with_image(), coords)
                ext = _grid_coords(torch.cat((r[:1] - s0, r, r[-1:] + s0)), ext_cols, b)
                kv_ext = sample_bilinear(grid.keys_values, ext).to(self.dtype or torch.float32)
                kv_ext = kv_ext.reshape(b, k + 2, n_cols + 2, -1)
                # neighbour order of neighbour_offsets: row offset outer, column offset inner
                kv = torch.stack([kv_ext[:, dr : dr + k, dc : dc + n_cols] for dr in range(3) for dc in range(3)], 3)
                kv = kv.reshape(b, k * n_cols, 9, -1)
                res = self._decode_flat(sampled[..., :-1], kv, sampled[..., -1], coords)
                out[:, i : i + k] = res.reshape(b, k, n_cols)
        return out


class _Stopped(Exception):
    """Raised inside an encoder pass once its job is cancelled (see :meth:`InferenceEngine.encode_until`)."""


def _grid_coords(rows: torch.Tensor, cols: torch.Tensor, batch: int) -> torch.Tensor:
    """(batch, R * C, 2) coordinates of the separable grid ``rows`` x ``cols``."""
    rr, cc = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack((rr, cc), dim=-1).reshape(1, -1, 2).expand(batch, -1, -1)
