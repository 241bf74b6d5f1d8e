"""Interactive rendering of one view: an interpolated preview at once, niiv after, with stale work
abandoned (``cancelled``) and encoder latents kept per slice. The thread it runs on is a
:class:`~napari_niiv.inference.worker.LatestWorker`.

Knows nothing of napari: a view is a :class:`~napari_niiv.inference.viewport.ViewGrid`, results go to a
callback. The napari widget wires camera events in and layer updates out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..data.normalise import Normalisation
from ..model.flops import model_flops
from ..model.latent_field import LatentGrid
from . import confidence
from .geometry import pixel_range
from .reconstructor import NormalisedView, Reconstructor, interpolate_planes
from .viewport import ViewGrid

# Decoder arithmetic between two cancellation checks: 32768 points of the v2 model (~0.1-0.2 s
# of CPU), many more of a small one (whose chunks, too small, would spend their time in overheads).
DECODE_FLOPS = 32768 * 695_000
# Progressive rendering: views larger than this get a niiv pass at 1/COARSE_FACTOR resolution first.
COARSE_FACTOR = 4
COARSE_MIN_PIXELS = 256 * 256
# Encoded crops are rounded out to these lattices (rows, columns) so small pans reuse them.
CROP_LATTICE = (32, 128)
# Latent values (input pixels x channels) per encoder pass over several slices, at most the
# reconstructor's slice_batch (16) slices: each oneDNN convolution has a fixed cost that small
# passes pay often, and passes too large for the caches slow down and vary. On an AMX CPU (G), the
# 512^2 xy view of cremi_a (320 slices of 25x320), medians of 3-5 whole renders: niiv-em (64
# channels) 10.2 s with 5 slices per pass, 9.2 with 10, 12.5 with 16 (8.3-16 s); niiv-fast (24)
# 1.64 s with 5, 1.30 with 10, 1.10 with 16, whose encoder alone with 16 against 5 also gained
# without AMX (AVX-512 bf16: 3.06 against 3.41 s) and in fp32 on AVX2 (2.85 against 3.02), oneDNN
# limited to each ISA. (On 2026-12-01, before the fused channels-last encoder, 4 slices of niiv-em
# per pass were the faster on A; this budget gives it 10 slices of 25 rows.)
ENCODE_VALUES = 10 * 25 * 320 * 64
# Planes decoded as one batch are copied into it (LatentGrid.concat) only up to this many bytes:
# small planes gain from one decoding, large ones are decoded one at a time instead.
CONCAT_BYTES = 32 * 2**20
# Latent rows kept around the decoded rows: the bilinear footprint and the attention neighbours
# (one isotropic voxel, under one input row) need one each side; two keep border clamping exact.
DECODE_MARGIN = 2
# Scrolling: when idle, the live view encodes up to PREFETCH_PLANES planes on each side of the
# view along its sliced axis, within PREFETCH_BYTES of latents (a 1080p xz plane of v1/v2 holds
# ~60-90 MiB), so a step of the slider runs only the decoder.
PREFETCH_PLANES = 2
PREFETCH_BYTES = 192 * 2**20
# A lazy source (dask, zarr) is read ahead for the next encoder batches of a view, up to this
# many bytes (float32) at a time: each read has a fixed cost (a dask graph, ~3 ms) and decompresses
# every chunk it touches, which batches of a few planes each would decompress again and again.
READ_AHEAD_BYTES = 64 * 2**20


def coarse_grid(grid: ViewGrid, factor: int) -> ViewGrid:
    """Every ``factor``-th sample of the displayed axes (centred in each group), the sliced axis kept."""
    first = [0 if a == grid.sliced_axis else min(factor // 2, c.size - 1) for a, c in enumerate(grid.coords)]
    coords = tuple(
        c[f::factor] if a != grid.sliced_axis else c for a, (c, f) in enumerate(zip(grid.coords, first, strict=True))
    )
    step = tuple(s if a == grid.sliced_axis else s * factor for a, s in enumerate(grid.world_step))
    start = tuple(w + f * s for w, f, s in zip(grid.world_start, first, grid.world_step, strict=True))
    return replace(grid, coords=coords, spacing=grid.spacing * factor, world_start=start, world_step=step)  # type: ignore[arg-type]


def upsample(image: np.ndarray, small: ViewGrid, grid: ViewGrid) -> np.ndarray:
    """``image`` sampled at ``small`` linearly interpolated to ``grid`` (edges held)."""
    out = image
    for axis, (lo, hi) in enumerate(zip(small.coords, grid.coords, strict=True)):
        if lo.size != hi.size:
            pos = np.interp(hi, lo, np.arange(lo.size, dtype=np.float64))
            out = interpolate_planes(out, pos + 0.5, axis, 0)
    return np.ascontiguousarray(out, dtype=np.float32)


def _snap(lo: int, hi: int, n: int, lattice: int) -> tuple[int, int]:
    return max(0, lo // lattice * lattice), min(n, -(-hi // lattice) * lattice)


@dataclass
class _Entry:
    """One plane's latents, encoded over the crop ``rows`` x ``cols`` (input pixels); ``grid``
    holds the latent rows ``held`` of it (all of them unless the view that encoded it decodes only
    a few rows, as an xy view does: ~1/6 of the memory of a 32-row crop, so a whole view's planes
    stay cached for its full-resolution pass after the coarse one)."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    grid: LatentGrid
    held: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.held is None:
            self.held = self.rows

    def covers(self, rows: tuple[int, int], cols: tuple[int, int], decode: tuple[int, int] | None = None) -> bool:
        """Encoded over a crop containing ``rows`` x ``cols``, and holding the latent rows
        ``decode`` (all of the crop's when None)."""
        inside = self.rows[0] <= rows[0] and rows[1] <= self.rows[1]
        held, want = self.held or self.rows, decode or self.rows
        inside = inside and held[0] <= want[0] and want[1] <= held[1]
        return inside and self.cols[0] <= cols[0] and cols[1] <= self.cols[1]

    @property
    def nbytes(self) -> int:
        g = self.grid
        kv = g.keys_values.numel() * g.keys_values.element_size() if g.keys_values is not None else 0
        return g.latents.numel() * g.latents.element_size() + kv + g.image.numel() * 4


class LatentCache:
    """Encoded slices by (orientation, plane), least recently used dropped past ``max_bytes``.

    An entry serves any later request inside its crop: zooming in or panning a little re-runs only
    the decoder.
    """

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, float], _Entry] = OrderedDict()
        # each entry's size, counted once when it is put: an xy view puts hundreds of planes, and
        # summing them all at every put took an eighth of its niiv-fast pass
        self._sizes: dict[tuple[str, float], int] = {}
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def get(
        self,
        key: tuple[str, float],
        rows: tuple[int, int],
        cols: tuple[int, int],
        decode: tuple[int, int] | None = None,
    ) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None or not entry.covers(rows, cols, decode):
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: tuple[str, float], entry: _Entry) -> None:
        self.nbytes -= self._sizes.get(key, 0)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        self._sizes[key] = entry.nbytes
        self.nbytes += self._sizes[key]
        while self.nbytes > self.max_bytes and len(self._entries) > 1:
            old, _ = self._entries.popitem(last=False)
            self.nbytes -= self._sizes.pop(old)

    def clear(self) -> None:
        self._entries.clear()
        self._sizes.clear()
        self.nbytes = 0


class ViewRenderer:
    """Renders view grids of one volume with one model, in the volume's normalised intensities.

    ``source`` is the raw ZYX array (numpy, dask, zarr): only the visible region plus the model's
    halo is read. Its latent cache is its own: :meth:`load_weights` is the way to change weights.
    """

    def __init__(self, source: Any, normalisation: Normalisation, reconstructor: Reconstructor) -> None:
        self.view = NormalisedView(source, normalisation)
        self.shape = self.view.shape
        self.norm = normalisation
        self.rec = reconstructor
        self.cache = LatentCache()
        self.decode_points = max(1024, int(DECODE_FLOPS // model_flops(reconstructor.model)["decoder_per_point"]))
        self._lazy = not isinstance(source, np.ndarray)
        # the input read ahead during one orientation of a render: (its ranges, the block)
        self._ahead: tuple[list[tuple[int, int]], np.ndarray] | None = None

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Render with new weights of the same architecture from now on (cached latents dropped).
        Call it between renders, from the thread that renders."""
        self.rec.engine.load_state(state)
        self.cache.clear()

    def _read(self, ranges: list[tuple[int, int]], finite: bool = True) -> np.ndarray:
        """The input block at ``ranges``; with ``finite``, refused if it holds NaN or inf (the
        model's input; interpolation passes them on, as any viewer shows them)."""
        block = self.view[tuple(slice(lo, hi) for lo, hi in ranges)]
        if finite and not np.all(np.isfinite(block)):
            from ..errors import NiivInputError

            raise NiivInputError("the visible region contains NaN or infinite values; replace them first")
        return block

    def _read_ahead(self, ranges: list[tuple[int, int]], axis: int, upto: int) -> np.ndarray:
        """The input block at ``ranges`` (finite), from a lazy source together with the planes
        after it along ``axis`` up to ``upto`` that the view will need next (within
        ``READ_AHEAD_BYTES``), kept until the render ends."""
        held = self._ahead
        if held is not None and all(h0 <= lo and hi <= h1 for (lo, hi), (h0, h1) in zip(ranges, held[0], strict=True)):
            return held[1][tuple(slice(lo - h0, hi - h0) for (lo, hi), (h0, _) in zip(ranges, held[0], strict=True))]
        if not self._lazy or upto <= ranges[axis][1]:
            return self._read(ranges)
        plane_bytes = 4 * int(np.prod([hi - lo for i, (lo, hi) in enumerate(ranges) if i != axis]))
        wide = list(ranges)
        wide[axis] = (
            ranges[axis][0],
            min(upto, max(ranges[axis][1], ranges[axis][0] + READ_AHEAD_BYTES // max(1, plane_bytes))),
        )
        self._ahead = (wide, self._read(wide))
        return self._read_ahead(ranges, axis, upto)

    def preview(self, grid: ViewGrid) -> np.ndarray:
        """Trilinear interpolation at the grid (what niiv refines): milliseconds, shape ``grid.shape``."""
        return self.interpolate(grid.coords)

    def interpolate(self, coords: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """Trilinear interpolation of the volume at the separable grid ``coords`` (one vector per axis)."""
        ranges = [pixel_range(c, n, 1) for c, n in zip(coords, self.shape, strict=True)]
        out = self._read(ranges, finite=False)
        for axis in range(3):
            out = interpolate_planes(out, coords[axis], axis, ranges[axis][0])
        return np.ascontiguousarray(out, dtype=np.float32)

    def render(
        self,
        grid: ViewGrid,
        cancelled: Callable[[], bool] = lambda: False,
        partial: Callable[[np.ndarray], None] | None = None,
        base: np.ndarray | None = None,
        coarse: Callable[[np.ndarray], None] | None = None,
        parts: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray | None:
        """niiv at the grid, or None if ``cancelled`` turned true on the way. ``partial`` receives
        the image so far (decoded parts over ``base``, the preview) as work proceeds. ``parts``, if
        given, receives the full-resolution image of each orientation decoded (for
        :meth:`render_confidence`).

        With ``coarse``, a large view is first decoded at a quarter of its resolution along each
        displayed axis (1/16 of the points), interpolated to full size and handed to ``coarse``;
        the encoder's latents computed for it are reused by the full pass, which then refines it.
        """
        if coarse is not None and grid.coords[0].size * grid.coords[1].size * grid.coords[2].size > COARSE_MIN_PIXELS:
            small = coarse_grid(grid, COARSE_FACTOR)
            low = self.render(small, cancelled)
            if low is None:
                return None
            base = upsample(low, small, grid)
            coarse(base)
        orients = self.rec.settings.orientations(grid.kind)
        if base is not None:
            out = np.array(base, dtype=np.float32, copy=True)
        elif partial is not None:
            out = self.preview(grid)  # what partial images show where niiv is not decoded yet
        else:
            out = np.empty(grid.shape, dtype=np.float32)  # every point is decoded
        results = {}
        for orient in orients:
            part = out.copy() if len(orients) > 1 else out
            if not self._render_orientation(grid, orient, part, cancelled, partial if len(orients) == 1 else None):
                return None
            results[orient] = part
        if parts is not None:
            parts.update(results)
        return confidence.reconstruction(results, orients)

    def render_confidence(
        self,
        grid: ViewGrid,
        cancelled: Callable[[], bool] = lambda: False,
        parts: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray | None:
        """The confidence map at the grid (:func:`.confidence.disagreement`, normalised), or None
        if ``cancelled`` turned true; orientations already decoded into ``parts`` by :meth:`render`
        at this grid are reused, so after a render with orientation ``both`` it costs nothing."""
        done = dict(parts or {})
        for orient in confidence.SLICES:
            if orient not in done:
                out = np.empty(grid.shape, dtype=np.float32)  # every point is decoded
                if not self._render_orientation(grid, orient, out, cancelled, None):
                    return None
                done[orient] = out
        return confidence.disagreement(done)

    @torch.inference_mode()
    def _render_orientation(
        self,
        grid: ViewGrid,
        orient: str,
        out: np.ndarray,
        cancelled: Callable[[], bool],
        partial: Callable[[np.ndarray], None] | None,
    ) -> bool:
        lay = self._layout(grid, orient)
        plane_axis, col_axis, planes, rows, cols = lay.plane_axis, lay.col_axis, lay.planes, lay.rows, lay.cols
        view = np.moveaxis(out, (plane_axis, 0, col_axis), (0, 1, 2))  # (planes, rows, cols), a view of out
        points = self.decode_points
        rows_per_chunk = max(1, points // max(1, cols.size))
        planes_per_batch = max(1, min(self.rec.slice_batch, points // max(1, rows.size * cols.size)))
        upto = pixel_range(planes, self.shape[plane_axis], 1)[1]  # the input planes this orientation reads
        last = time.perf_counter()
        # Each partial image costs the GUI a layer update and a repaint: fewer for larger views.
        interval = max(0.5, 0.5 * out.size / 1e6)
        try:
            for p0 in range(0, planes.size, planes_per_batch):
                if cancelled():
                    return False
                batch = planes[p0 : p0 + planes_per_batch]
                # xy views decode one z per plane: their planes are cached with the latent rows around it
                keep = lay.decode if rows.size == 1 else None
                # stopped between encoder batches too: one plane batch of an xy view is tens of
                # slices (a slider step during it waited 1.2-2.1 s for the new plane's preview)
                entries = self._encoded(orient, batch, lay, keep, upto, cancelled)
                if cancelled():
                    return False
                for group, grid_batch, r0, c0 in _batched(entries, rows):
                    r = torch.as_tensor(rows - r0, dtype=torch.float32)
                    c = torch.as_tensor(cols - c0, dtype=torch.float32)
                    for i in range(0, rows.size, rows_per_chunk):
                        if cancelled():
                            return False
                        dec = self.rec.engine.render(grid_batch, r[i : i + rows_per_chunk], c)
                        view[[p0 + g for g in group], i : i + rows_per_chunk, :] = dec.cpu().numpy()
                        if partial is not None and time.perf_counter() - last > interval:
                            partial(out.copy())
                            last = time.perf_counter()
        finally:
            self._ahead = None  # read again by the next render: the data may change between renders
        return True

    def _layout(self, grid: ViewGrid, orient: str) -> _Layout:
        plane_axis, col_axis = (1, 2) if orient == "xz" else (2, 1)
        rows, cols = grid.coords[0], grid.coords[col_axis]
        need_rows = pixel_range(rows, self.shape[0], self.rec.halo)
        need_cols = pixel_range(cols, self.shape[col_axis], self.rec.halo)
        # A slice crossing the view (each yz slice of an xz view: one column; the other half of
        # 'both' and of the confidence map) is encoded over its halo only: rounded out to the
        # lattice, its ~33 columns would cost ~8x the encoding and the cache, for pans that never
        # reuse them (panning changes the planes, not the column).
        crop_cols = _snap(*need_cols, self.shape[col_axis], CROP_LATTICE[1]) if cols.size > 1 else need_cols
        # An xy view (one output z) caches only the latent rows around its z (``decode``), so a
        # crop rounded out to the row lattice would never serve another z: it is encoded over its
        # halo only (niiv-fast's xy view of the 32-plane EM sample: 25 rows instead of 32).
        crop_rows = _snap(*need_rows, self.shape[0], CROP_LATTICE[0]) if rows.size > 1 else need_rows
        return _Layout(
            plane_axis,
            col_axis,
            grid.coords[plane_axis],
            rows,
            cols,
            need_rows,
            need_cols,
            crop_rows,
            crop_cols,
            pixel_range(rows, self.shape[0], DECODE_MARGIN),  # the latent rows the decoder reads
        )

    @torch.inference_mode()
    def prefetch(
        self,
        grid: ViewGrid,
        step: float = 1.0,
        cancelled: Callable[[], bool] = lambda: False,
        planes: int = PREFETCH_PLANES,
        budget_bytes: int = PREFETCH_BYTES,
    ) -> int:
        """Encode the planes next to ``grid`` along its sliced axis (``step`` input pixels apart,
        nearest first, alternating sides) into the latent cache, so that rendering one of them runs
        only the decoder; returns how many planes are cached. Stops when ``cancelled`` turns true
        (a new view) or the next plane would pass ``budget_bytes`` of new latents (never more than
        half the cache, so the view's own latents are not evicted). xy views (sliced along z) and
        slices crossing the view (the yz half of 'both' on an xz view) are not prefetched: a step
        there changes every slice's crop."""
        axis = grid.sliced_axis
        if axis == 0 or step <= 0:
            return 0
        orients = [o for o in self.rec.settings.orientations(grid.kind) if (1 if o == "xz" else 2) == axis]
        budget = min(budget_bytes, self.cache.max_bytes // 2)
        here, n = float(grid.coords[axis][0]), self.shape[axis]
        spent, per_plane, done = 0, 0, 0
        for k in range(1, planes + 1):
            for sign in (1, -1):
                coord = here + sign * k * step
                if not 0 <= coord <= n:
                    continue
                coords = list(grid.coords)
                coords[axis] = np.array([coord])
                shifted = replace(grid, coords=tuple(coords))
                if cancelled() or spent + per_plane > budget:
                    return done
                fresh = self.encode(shifted, orients)
                spent += sum(fresh)
                per_plane = max(per_plane, *fresh, 0)
                done += 1
        return done

    @torch.inference_mode()
    def encode(
        self, grid: ViewGrid, orients: list[str] | None = None, cancelled: Callable[[], bool] = lambda: False
    ) -> list[int]:
        """Encode the slices of ``grid`` (``orients``, default the settings') into the latent
        cache without decoding: later renders of any grid inside it (a neighbouring plane, the
        tiles of one lazy-layer plane) run only the decoder. Returns the bytes of each new entry.
        Stops between encoder batches once ``cancelled`` turns true (an xy plane of a lazy layer
        is every xz slice of the volume: seconds to minutes)."""
        fresh = []
        for orient in orients if orients is not None else self.rec.settings.orientations(grid.kind):
            if cancelled():
                break
            lay = self._layout(grid, orient)
            found = self._encoded(orient, lay.planes, lay, None, cancelled=cancelled)
            fresh += [f[0].nbytes for f in found if f is not None and f[1] is not None]
        return fresh

    def _encoded(
        self,
        orient: str,
        batch: np.ndarray,
        lay: _Layout,
        keep: tuple[int, int] | None,
        upto: int = 0,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[tuple[_Entry, LatentGrid | None, int] | None]:
        """Latents for each plane of ``batch``: from the cache, else encoded over the snapped crop
        (and cached with the latent rows ``keep`` only, when given). An entry serves a plane if it
        was encoded over a crop covering the layout's needed rows x columns and holds the rows it
        decodes. Each comes with the encoder batch it was just computed in and its index there, or
        None when it came from the cache. The input is read ahead up to plane ``upto`` (exclusive).
        With ``cancelled``, encoding stops between batches (and layers) once it turns true: planes
        not encoded then are None."""
        plane_axis, col_axis, crop_rows, crop_cols = lay.plane_axis, lay.col_axis, lay.crop_rows, lay.crop_cols
        need_rows, need_cols, decode = lay.need_rows, lay.need_cols, lay.decode
        keys = [(orient, round(float(p), 6)) for p in batch]
        cached = [self.cache.get(k, need_rows, need_cols, decode) for k in keys]
        found: list[tuple[_Entry, LatentGrid | None, int] | None] = [
            None if e is None else (e, None, 0) for e in cached
        ]
        missing = [i for i, e in enumerate(found) if e is None]
        if missing:
            coords = batch[missing]
            prange = pixel_range(coords, self.shape[plane_axis], 1)
            ranges = [crop_rows, (0, 0), (0, 0)]
            ranges[plane_axis], ranges[col_axis] = prange, crop_cols
            block = self._read_ahead(ranges, plane_axis, upto)
            low = np.moveaxis(interpolate_planes(block, coords, plane_axis, prange[0]), plane_axis, 0)
            per_slice = low.shape[1] * low.shape[2] * self.rec.model.config.latent_dim
            step = max(1, min(self.rec.slice_batch, ENCODE_VALUES // max(1, per_slice)))
            for s in range(0, len(missing), step):
                if cancelled is not None and cancelled():
                    break
                x = torch.from_numpy(np.ascontiguousarray(low[s : s + step])).unsqueeze(1)
                g = self.rec.engine.encode_until(x, self.rec.alpha, cancelled or (lambda: False))
                if g is None:  # cancelled inside the encoder (between its layers)
                    break
                a, b = (0, 0) if keep is None else (keep[0] - crop_rows[0], keep[1] - crop_rows[0])
                narrow = keep is not None and (a, b) != (0, crop_rows[1] - crop_rows[0])
                for j, i in enumerate(missing[s : s + step]):
                    one = _plane(g, j, a, b) if narrow else _plane(g, j)
                    entry = _Entry(crop_rows, crop_cols, one, keep if narrow else None)
                    self.cache.put(keys[i], entry)
                    found[i] = (entry, g, j)
        return found  # type: ignore[return-value]


@dataclass(frozen=True)
class _Layout:
    """How one orientation of a view is encoded and decoded: its axes, the plane, row and column
    coordinates, the input rows/columns the encoder needs (halo included), the crop they are
    rounded out to, and the latent rows the decoder reads."""

    plane_axis: int
    col_axis: int
    planes: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    need_rows: tuple[int, int]
    need_cols: tuple[int, int]
    crop_rows: tuple[int, int]
    crop_cols: tuple[int, int]
    decode: tuple[int, int]


def _plane(g: LatentGrid, j: int, a: int | None = None, b: int | None = None) -> LatentGrid:
    """Plane ``j`` of the batch ``g``: a view of it, or a copy of its rows ``a:b`` (so the cache
    does not keep the whole batch alive)."""
    if a is None:
        return g.crop(slice(j, j + 1))
    return g.crop(slice(j, j + 1), slice(a, b), copy=True)


def _batched(
    entries: list[tuple[_Entry, LatentGrid | None, int]], rows: np.ndarray
) -> list[tuple[list[int], LatentGrid, int, int]]:
    """Group planes encoded over the same crop into one batch each, holding only the latent rows
    that decoding ``rows`` reads (:func:`_rows_for`): (plane indices, grid, row and column offsets
    of the grid in the volume). Planes that are exactly one encoder batch are decoded from it as
    is; others are concatenated after cropping, so an xy view copies a few rows, not whole crops,
    unless that copies more than ``CONCAT_BYTES``: then each plane is a batch of its own."""
    groups: dict[tuple[tuple[int, int], tuple[int, int], tuple[int, int] | None], list[int]] = {}
    for i, (e, _, _) in enumerate(entries):
        groups.setdefault((e.rows, e.cols, e.held), []).append(i)
    out = []
    for (crop_rows, cols, held), idx in groups.items():
        batch = entries[idx[0]][1]
        whole = batch is not None and batch.latents.shape[0] == len(idx)
        if whole and all(entries[i][1] is batch and entries[i][2] == k for k, i in enumerate(idx)):
            assert batch is not None
            grids, base = [batch.crop()], crop_rows[0]
        else:
            grids, base = [entries[i][0].grid for i in idx], (held or crop_rows)[0]
        cropped = [_rows_for(g, rows - base) for g in grids]
        lo = cropped[0][1]
        gs = [g for g, _ in cropped]
        if len(gs) > 1 and sum(g.nbytes for g in gs) > CONCAT_BYTES:
            # large planes (whole crops of a wide view): decoded one at a time, not copied into
            # one batch (8 planes of a 3D overview 1920 columns wide: 280 MiB, 0.18 s)
            out += [([i], g, base + lo, cols[0]) for i, g in zip(idx, gs, strict=True)]
        else:
            out.append((idx, LatentGrid.concat(gs), base + lo, cols[0]))
    return out


def _rows_for(grid: LatentGrid, rows: np.ndarray) -> tuple[LatentGrid, int]:
    """The rows of ``grid`` that decoding ``rows`` reads (bilinear footprint and attention
    neighbours, one row of margin each side; the grid's own edges kept, so border clamping is
    unchanged), and the first row's index: an xy view decodes one z per plane, and sampling a
    few rows instead of the whole crop skips copying and striding through the rest."""
    h = grid.latents.shape[2]
    lo, hi = pixel_range(rows, h, DECODE_MARGIN)
    if (lo, hi) == (0, h):
        return grid, 0
    return grid.crop(rows=slice(lo, hi)), lo
