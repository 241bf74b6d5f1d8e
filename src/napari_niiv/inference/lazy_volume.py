"""The whole isotropic volume as a virtual multiscale array that answers at once.

Level ``L`` has the shape of level ``L`` of the written pyramid (:mod:`.geometry`: halved, rounded
up); a continuous model renders it directly where napari draws its voxels (level-0 index ``k`` times
napari's downsample factor: :func:`~.geometry.drawn_level_coords`), so that every level, zoomed out
or in 3D, lies over the input. A save writes level 0 (its pyramid averages it).

Slicing returns immediately: niiv tiles already computed, trilinear
interpolation elsewhere (of a lazy input, read on a thread of its own: NaN until it is ready, then
``on_preview``); the missing tiles of the latest 2D requests are computed a few neighbours of a
row at a time on the layer's :class:`~.worker.LatestWorker`, and ``on_tile`` is called (from that
thread) for each tile ready so the viewer can redraw.

A 3D request (napari's 3D view reads the coarsest level whole) never blocks: it is answered at
once with the nearest input voxels (milliseconds: no interpolation of millions of voxels on the
GUI thread) when the input is in memory or small; a large lazy input (a big or remote store,
whose every chunk those voxels would touch) is answered with an empty (NaN) block instead. The
level is rendered on the worker with the fast model when one is given (``fast``: niiv-fast on
CPUs, also used for the 2D tiles of levels 1 and up), else the full one; the next read returns it.

With :meth:`LazyIsotropic.enable_confidence`, the same tiles also carry the confidence map
(:mod:`.confidence`), shown by :attr:`LazyIsotropic.confidence_levels` (same shapes and placement):
one worker and one latent cache serve both, and a tile's map comes from the same decoding as its
image. Where a map tile is not computed yet it reads NaN (unknown), never 0 (which would read as
"confident").
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import numpy as np

from ..data.normalise import Normalisation
from . import confidence
from .geometry import OutputGeometry, drawn_level_coords, pyramid_shapes
from .reconstructor import Reconstructor
from .viewport import ViewGrid
from .views import ViewRenderer
from .worker import Cancelled, LatestWorker

log = logging.getLogger(__name__)
TILE = 256
# Neighbouring tiles of a row decoded as one region: most of the speed of a whole view (on an AMX
# CPU, decoding a 1080p canvas's 40 tiles: 1.3 s four at a time, 2.7 s one by one, 1.0 s whole), and
# a row is what a newer request for the same tiles waits behind
ROW_TILES = 4
PREVIEWS_KEPT = 128  # interpolated stand-ins of missing tiles kept (at most 32 MiB of 256^2 float32)
# A 3D read's nearest voxels come from a lazy input only up to this size: they are spread over
# the whole volume, so they touch every chunk of it (on napari's GUI thread)
NEAREST_BYTES = 64 << 20
VOLUMES_KEPT = 2  # 3D renders kept (the coarsest level of one layer is what napari's 3D view reads)
PREFETCH_3D_VOXELS = 1 << 22  # a coarsest level up to this size is rendered ahead for the 3D view
TileKey = tuple[int, int, int, int, int]  # level, sliced axis, plane index, tile row, tile column
KINDS = ("niiv", "confidence")  # what a level shows: the reconstruction, or its confidence map


class IsotropicLevel:
    """One pyramid level, or a region of it: an array-like napari can slice (dtype, shape, ndim,
    ``__getitem__``). Slicing only narrows the region; pixels are made when napari converts the
    result to an array, so a slab napari cuts before picking the plane costs nothing. ``kind``
    'confidence' shows the confidence map of the same voxels."""

    def __init__(
        self,
        volume: LazyIsotropic,
        level: int,
        index: tuple[slice, slice, slice] | None = None,
        squeeze: tuple[int, ...] = (),
        kind: str = "niiv",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
        self.volume = volume
        self.level = level
        self.kind = kind
        self.index = index or tuple(slice(0, n) for n in volume.shapes[level])
        self.squeeze = squeeze
        self.shape = tuple(s.stop - s.start for a, s in enumerate(self.index) if a not in squeeze)
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, key: Any) -> IsotropicLevel:
        free = [a for a in range(3) if a not in self.squeeze]
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > len(free):
            raise IndexError(f"too many indices: {len(key)} for {len(free)} dimensions")
        key = key + (slice(None),) * (len(free) - len(key))
        index, squeeze = list(self.index), list(self.squeeze)
        for axis, k in zip(free, key, strict=True):
            base, n = index[axis].start, index[axis].stop - index[axis].start
            if isinstance(k, (int, np.integer)):
                i = int(k) + n if k < 0 else int(k)
                if not 0 <= i < n:
                    raise IndexError(f"index {k} is out of bounds for an axis of size {n}")
                index[axis] = slice(base + i, base + i + 1)
                squeeze.append(axis)
            elif isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step != 1:
                    raise IndexError("the isotropic volume is sliced with step 1 only")
                index[axis] = slice(base + start, base + max(start, stop))
            else:
                raise IndexError(f"unsupported index {k!r}: use integers and slices")
        return IsotropicLevel(self.volume, self.level, tuple(index), tuple(sorted(squeeze)), self.kind)  # type: ignore[arg-type]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.volume.get(self.level, self.index, self.kind)
        out = out.squeeze(axis=self.squeeze) if self.squeeze else out
        return out if dtype is None else out.astype(dtype)

    def write_ome_zarr(self, path: str, contrast: tuple[float, float] | None = None) -> str:
        """Save: napari's writer hands the layer's data here (full niiv, or its map, level 0), with
        the layer's contrast limits as the display window."""
        return self.volume.write_ome_zarr(path, self.kind, contrast)


class LazyIsotropic:
    """Tiles of niiv over a whole volume, computed on demand and cached (least recently used out)."""

    def __init__(
        self,
        source: Any,
        normalisation: Normalisation,
        reconstructor: Reconstructor,
        geometry: OutputGeometry,
        cache_bytes: int = 1 << 30,
        fast: Reconstructor | None = None,
    ) -> None:
        self.norm = normalisation
        self.rec = reconstructor
        self.source = source
        self.renderer = ViewRenderer(source, normalisation, reconstructor)
        self.fast_renderer = ViewRenderer(source, normalisation, fast) if fast is not None else None
        self.in_shape = tuple(int(s) for s in source.shape)
        self.geometry = geometry
        self.shapes = pyramid_shapes(geometry.shape)
        self.levels = [IsotropicLevel(self, i) for i in range(len(self.shapes))]
        self.confidence_levels = [IsotropicLevel(self, i, kind="confidence") for i in range(len(self.shapes))]
        self.confidence = False  # tiles also compute the confidence map (enable_confidence)
        self.cache_bytes = cache_bytes
        self.out_dtype: Any = np.float32  # what a save writes
        self.on_write_progress: Callable[[int, int], None] | None = None
        self.on_tile: Callable[[TileKey], None] | None = None
        self.on_error: Callable[[BaseException], None] | None = None
        self._reported: set[str] = set()  # failures already reported (_report)
        self._tiles: OrderedDict[TileKey, np.ndarray] = OrderedDict()
        self._maps: OrderedDict[TileKey, np.ndarray] = OrderedDict()  # confidence tiles
        self._previews: OrderedDict[TileKey, np.ndarray] = OrderedDict()  # interpolated, until made
        # 3D reads: (level, bounds) -> the rendered region, and the nearest-voxel answers given meanwhile
        self._volumes: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._nearest: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._volume_wanted: tuple | None = None
        # the display slice and the thumbnail, per kind of layer
        self._recent: dict[str, deque[list[TileKey]]] = {k: deque(maxlen=2) for k in KINDS}
        self._lock = threading.Lock()  # guards _tiles and _recent: napari's thread and the worker's
        self._closed = False
        self.prefetch_3d = True  # render the 3D overview when idle (overview_key)
        self._worker: LatestWorker[int] = LatestWorker(on_error=self._report, name="niiv-tiles")
        # the stand-ins of a lazy input are read on their own thread (_paste_previews), beside the tiles
        self.on_preview: Callable[[TileKey], None] | None = None
        self._previews_asked: set[TileKey] = set()
        self._preview_worker: LatestWorker[int] | None = None
        if not isinstance(source, np.ndarray):
            self._preview_worker = LatestWorker(on_error=self._report, name="niiv-previews")

    def level_transform(self, level: int) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(scale, translate) of level ``level`` in the world: the written pyramid's."""
        return self.geometry.level(level)

    # -- reading -------------------------------------------------------------------------------
    def coords(self, level: int, index: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Continuous input coordinates of the voxels ``index`` of level ``level``, where napari draws
        them (:func:`~.geometry.drawn_level_coords`)."""
        axes = zip(self.in_shape, self.geometry.shape, self.shapes[level], index, strict=True)
        return tuple(drawn_level_coords(n_in, n_out, n, s.start, s.stop) for n_in, n_out, n, s in axes)  # type: ignore[return-value]

    def enable_confidence(self, on: bool = True) -> None:
        """Compute the confidence map with the tiles from now on (or stop: computed maps stay)."""
        with self._lock:
            self.confidence = bool(on)
            if not on:
                self._recent["confidence"].clear()

    def get(self, level: int, index: tuple[slice, slice, slice], kind: str = "niiv") -> np.ndarray:
        """Region ``index`` of level ``level`` now: cached niiv tiles, interpolation for the rest
        (``kind`` 'confidence': cached map tiles, NaN for the rest). A plane (one axis of length 1)
        queues its missing tiles (with those of the request before)."""
        if any(s.stop <= s.start for s in index):
            return np.zeros([s.stop - s.start for s in index], np.float32)
        thin = [a for a in range(3) if index[a].stop - index[a].start == 1]
        flat = [a for a in thin if self.shapes[level][a] == 1]
        if len(thin) == 2 and len(flat) == 1:  # a plane of a level one voxel thick (z of a few sections, zoomed out)
            thin.remove(flat[0])
        if not thin:
            return self._get_volume(level, index, kind)
        if kind == "confidence":
            out = np.full([s.stop - s.start for s in index], np.nan, np.float32)
        elif len(thin) == 1:
            out = np.empty([s.stop - s.start for s in index], np.float32)  # every part is filled below
        else:  # a line or a point: no tiles
            return self._interpolated(level, index)
        if len(thin) == 1:
            a, b = (x for x in range(3) if x != thin[0])
            missing = self._fill_and_queue(level, thin[0], index, out, kind)
            if kind == "niiv":  # interpolation only where no tile is made yet
                self._paste_previews(out, index, missing, a, b)
        return out

    def _paste_previews(self, out: np.ndarray, index: tuple[slice, ...], keys: list[TileKey], a: int, b: int) -> None:
        """The interpolated stand-ins of tiles ``keys`` into ``out``: made now from an input in
        memory; from a lazy one (a store too large to read into memory) on a thread, NaN (nothing
        shown) until they arrive and ``on_preview`` asks for a redraw: read through dask, one
        slider step's stand-ins took 0.4-1.7 s of napari's thread."""
        later = []
        for key in keys:
            tile = self._preview(key, make=self._preview_worker is None)  # a lazy input: on the thread
            if tile is None:
                later.append(key)
                tile = np.full([s.stop - s.start for s in self._tile_index(key)], np.nan, np.float32)
            _paste(out, index, tile, self._tile_index(key), a, b)
        if not later or self._preview_worker is None:
            return
        with self._lock:
            if set(later) <= self._previews_asked:  # already being made
                return
            asked = self._previews_asked = set(later)
        self._preview_worker.submit(lambda cancelled: self._make_previews(later, cancelled, asked))

    def _make_previews(self, keys: list[TileKey], cancelled: Cancelled, asked: set[TileKey]) -> int:
        """The preview worker's task: the stand-ins of ``keys`` not made yet, each followed by
        ``on_preview``; stops when a newer request or closing cancels it."""
        made = 0
        try:
            for key in keys:
                if cancelled() or self._closed:
                    break
                with self._lock:
                    done = key in self._previews or key in self._tiles
                if not done:
                    self._preview(key)
                    made += 1
                    if self.on_preview is not None:
                        self.on_preview(key)
        finally:  # asked again by the next read if not made (cancelled, failed); a newer task's own
            with self._lock:
                if self._previews_asked is asked:
                    self._previews_asked = set()
        return made

    def _preview(self, key: TileKey, make: bool = True) -> np.ndarray | None:
        """The interpolated stand-in of a tile not made yet, kept until the tile is: the input does
        not change, so the redraws as tiles arrive paste it instead of interpolating the rest of the
        view again on napari's thread each time (41 parts, 28 of a redraw's 43 ms beside a
        1920x1080 view). None if not kept and not ``make``."""
        with self._lock:
            tile = self._previews.get(key)
            if tile is not None:
                self._previews.move_to_end(key)
                return tile
        if not make:
            return None
        tile = self._interpolated(key[0], self._tile_index(key))
        with self._lock:
            self._previews[key] = tile
            # the stand-ins the latest requests (the view, the thumbnail) need are never evicted
            # by one another: a 4K view needs 144 of them
            needed = sum(len(keys) for keys in self._recent["niiv"])
            while len(self._previews) > max(PREVIEWS_KEPT, needed):
                self._previews.popitem(last=False)
        return tile

    def _interpolated(self, level: int, index: tuple[slice, slice, slice]) -> np.ndarray:
        return self.norm.invert(self.renderer.interpolate(self.coords(level, index)), np.float32)

    def _get_volume(self, level: int, index: tuple[slice, slice, slice], kind: str) -> np.ndarray:
        """A 3D read: the rendered region if made, else the nearest input voxels now and the
        render queued (confidence maps are not made in 3D: NaN, unknown)."""
        if kind == "confidence":
            return np.full([s.stop - s.start for s in index], np.nan, np.float32)
        key = (level, tuple((s.start, s.stop) for s in index))
        with self._lock:
            done = self._volumes.get(key)
            if done is not None:
                self._volumes.move_to_end(key)
                return done
            quick = self._nearest.get(key)
            queue = self._volume_wanted != key
            self._volume_wanted = key
            if queue:  # the 3D render supersedes the 2D requests on the worker: no longer pending
                for recent in self._recent.values():
                    recent.clear()
        if quick is None:
            quick = self.nearest(level, index)
            with self._lock:
                self._nearest[key] = quick
                while len(self._nearest) > VOLUMES_KEPT:
                    self._nearest.popitem(last=False)
        if queue:
            self._worker.submit(lambda cancelled: self._compute_volume(key, cancelled))
        return quick

    def nearest(self, level: int, index: tuple[slice, slice, slice]) -> np.ndarray:
        """The input voxel under each output voxel of the region: float32, input intensities; NaN
        (nothing shown yet) for a lazy input over ``NEAREST_BYTES``."""
        data = self.source
        nbytes = int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize
        if not isinstance(data, np.ndarray) and nbytes > NEAREST_BYTES:
            return np.full([s.stop - s.start for s in index], np.nan, np.float32)
        picks = [
            np.clip(np.floor(c).astype(np.int64), 0, n - 1)
            for c, n in zip(self.coords(level, index), self.in_shape, strict=True)
        ]
        unique = [np.unique(p) for p in picks]
        if hasattr(data, "oindex"):  # zarr
            block = np.asarray(data.oindex[tuple(unique)])
        else:  # numpy, dask: one axis at a time
            block = data[unique[0]][:, unique[1]][:, :, unique[2]]
            block = np.asarray(block.compute() if hasattr(block, "compute") else block)
        where = [np.searchsorted(u, p) for u, p in zip(unique, picks, strict=True)]
        return np.ascontiguousarray(block[np.ix_(*where)], dtype=np.float32)

    def _compute_volume(self, key: tuple, cancelled: Cancelled) -> int:
        """The worker's task for a 3D read: render the region with the fast model (else the full
        one) and keep it; 1 if made, 0 if cancelled by a newer request or the layer closing."""
        level, bounds = key
        index = tuple(slice(a, b) for a, b in bounds)
        result = self._renderer(fast=True).render(self._grid(level, index, 1), lambda: cancelled() or self._closed)
        if result is None:
            with self._lock:
                if self._volume_wanted == key:
                    self._volume_wanted = None  # asked again later: queued again
            return 0
        image = self.norm.invert(result, np.float32)
        with self._lock:
            self._volumes[key] = image
            while len(self._volumes) > VOLUMES_KEPT:
                self._volumes.popitem(last=False)
            self._nearest.pop(key, None)
            if self._volume_wanted == key:
                self._volume_wanted = None
        if self.on_tile is not None:
            self.on_tile((level, 3, 0, 0, 0))
        return 1

    def _fill_and_queue(
        self, level: int, axis: int, index: tuple[slice, ...], out: np.ndarray, kind: str = "niiv"
    ) -> list[TileKey]:
        """Paste the cached tiles of the plane request ``index`` into ``out``, queue the missing
        ones, and return their keys (the parts of ``out`` they cover are not filled)."""
        plane = index[axis].start
        a, b = (x for x in range(3) if x != axis)
        missing: list[TileKey] = []
        with self._lock:
            store = self._maps if kind == "confidence" else self._tiles
            for ta in range(index[a].start // TILE, (index[a].stop - 1) // TILE + 1):
                for tb in range(index[b].start // TILE, (index[b].stop - 1) // TILE + 1):
                    key = (level, axis, plane, ta, tb)
                    tile = store.get(key)
                    if tile is None:
                        missing.append(key)
                        continue
                    store.move_to_end(key)
                    if key in self._tiles:  # a map in use keeps its image (eviction goes by images)
                        self._tiles.move_to_end(key)
                    _paste(out, index, tile, self._tile_index(key), a, b)
            if kind == "niiv" or self.confidence:
                self._recent[kind].appendleft(missing)
            self._volume_wanted = None  # a queued 3D render is superseded by this submission
            wanted = self._wanted()
        if wanted:
            self._worker.submit(lambda cancelled: self._compute(wanted, cancelled))
        return list(missing)  # the worker may drop failed keys from its own list meanwhile

    def _tile_index(self, key: TileKey) -> tuple[slice, slice, slice]:
        level, axis, plane, ta, tb = key
        shape = self.shapes[level]
        a, b = (x for x in range(3) if x != axis)
        index = [slice(0, 0)] * 3
        index[axis] = slice(plane, plane + 1)
        index[a] = slice(ta * TILE, min(shape[a], (ta + 1) * TILE))
        index[b] = slice(tb * TILE, min(shape[b], (tb + 1) * TILE))
        return tuple(index)  # type: ignore[return-value]

    @property
    def pending(self) -> int:
        """Tiles wanted by the latest requests and not computed yet."""
        with self._lock:
            return len(self._wanted()) + (self._volume_wanted is not None)

    def _wanted(self) -> list[TileKey]:
        """Missing tiles of the two latest requests of each kind, newest request first, images
        before maps (call with the lock held)."""
        images = (k for keys in self._recent["niiv"] for k in keys if k not in self._tiles)
        maps = (k for keys in self._recent["confidence"] for k in keys if self.confidence and k not in self._maps)
        return list(dict.fromkeys([*images, *maps]))

    def _missing(self, key: TileKey) -> bool:
        """Call with the lock held."""
        return key not in self._tiles or (self.confidence and key not in self._maps)

    # -- computing -----------------------------------------------------------------------------
    def _grid(self, level: int, index: tuple[slice, ...], sliced_axis: int) -> ViewGrid:
        """The region ``index`` of level ``level`` as a view grid (planes along ``sliced_axis``)."""
        return ViewGrid(self.coords(level, index), sliced_axis, 0.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # type: ignore[arg-type]

    def _renderer(self, fast: bool) -> ViewRenderer:
        """The fast model's renderer when ``fast`` and one was given (3D reads, levels >= 1), else the full one."""
        return self.fast_renderer if fast and self.fast_renderer is not None else self.renderer

    def compute_tile(self, key: TileKey, cancelled: Cancelled | None = None) -> np.ndarray | None:
        """niiv for one tile, in the input's intensity scale; None if ``cancelled`` turned true."""
        tiles = self.compute_tiles(key, cancelled, with_confidence=False)
        return None if tiles is None else tiles[0]

    def compute_tiles(
        self, key: TileKey, cancelled: Cancelled | None = None, with_confidence: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None] | None:
        """niiv for one tile and, ``with_confidence``, its confidence map from the same decoding,
        both in the input's intensity scale; None if ``cancelled`` turned true."""
        made = self.compute_row([key], cancelled, with_confidence)
        return None if made is None else made[0]

    def compute_row(
        self, keys: list[TileKey], cancelled: Cancelled | None = None, with_confidence: bool = True
    ) -> list[tuple[np.ndarray, np.ndarray | None]] | None:
        """:meth:`compute_tiles` for neighbouring tiles of one row of one plane (``keys`` left to
        right, adjacent), decoded as one region and cut into tiles: the decoder's runs of output
        rows are then as wide as the row, not one tile (with AMX, 40 tiles one by one decoded at
        half the speed of 10 rows of four). Pointwise, so each tile equals the tile made alone."""
        if any(k[:4] != keys[0][:4] or k[4] != keys[0][4] + i for i, k in enumerate(keys)):
            raise ValueError(f"compute_row takes neighbouring tiles of one row, left to right; got {keys}")
        cancelled = cancelled or (lambda: False)
        indices = [self._tile_index(k) for k in keys]
        union = _union(indices)
        grid = self._grid(keys[0][0], union, keys[0][1])
        parts: dict[str, np.ndarray] = {}
        renderer = self._renderer(fast=keys[0][0] > 0)
        result = renderer.render(grid, cancelled, parts=parts)
        if result is None:
            return None
        image = self.norm.invert(result, np.float32)
        uncertainty = None
        if with_confidence:
            uncertainty = renderer.render_confidence(grid, cancelled, parts)
            if uncertainty is None:
                return None
            uncertainty = confidence.to_intensity(uncertainty, self.norm)

        def cut(region: np.ndarray, index: tuple[slice, ...]) -> np.ndarray:
            within = tuple(slice(i.start - u.start, i.stop - u.start) for i, u in zip(index, union, strict=True))
            return np.ascontiguousarray(region[within])  # a tile of its own: evicted alone

        return [(cut(image, i), None if uncertainty is None else cut(uncertainty, i)) for i in indices]

    def _compute(self, wanted: list[TileKey], cancelled: Cancelled) -> int:
        """The worker's task: the tiles in ``wanted`` in order, up to ``ROW_TILES`` neighbours of one
        row at a time (:meth:`compute_row`), until a newer request supersedes it: checked between
        rows, and inside a row once neither of the two latest requests wants any of its tiles (a pan
        most likely still wants them; scrolling on to other planes does not). The layer closing
        stops it anywhere. A row that fails is made again tile by tile, so that a bad tile costs only
        itself. Returns tiles made."""
        made = 0
        shared: set[tuple[int, int, int]] = set()
        asked = set(wanted)
        alone: set[TileKey] = set()  # tiles of a failed row: made one by one
        queue = deque(wanted)
        while queue and not cancelled():
            key = queue.popleft()
            with self._lock:
                if not self._missing(key):
                    continue
                with_map = self.confidence
                plane = [] if key[:3] in shared else [k for k in wanted if k[:3] == key[:3] and self._missing(k)]
                row = [key]
                while len(row) < ROW_TILES and key not in alone:
                    right = (*key[:4], row[-1][4] + 1)
                    if right not in asked or right in alone or not self._missing(right):
                        break
                    row.append(right)
            shared.add(key[:3])
            if len(plane) > 1:
                self._encode_together(plane, cancelled)
            try:
                tiles = self.compute_row(row, lambda r=row: self._superseded(r, cancelled), with_confidence=with_map)
            except BaseException as exc:  # keep serving; the layer shows interpolation there
                if len(row) > 1:
                    alone.update(row)
                    queue.appendleft(key)
                    continue
                with self._lock:
                    for recent in self._recent.values():
                        for keys in recent:
                            if key in keys:
                                keys.remove(key)
                self._report(exc)
                continue
            if tiles is None:  # closed, or superseded
                break
            with self._lock:
                for k, (image, umap) in zip(row, tiles, strict=True):
                    self._tiles[k] = image
                    self._tiles.move_to_end(k)
                    self._previews.pop(k, None)
                    if umap is not None:
                        self._maps[k] = umap
                self._evict(keep=len(row))
            made += len(row)
            if self.on_tile is not None:
                for k in row:
                    self.on_tile(k)
        if not cancelled() and not self._closed:
            self._prefetch_volume(cancelled)
        return made

    def _superseded(self, row: list[TileKey], cancelled: Cancelled) -> bool:
        """Whether to give up the row being made: the layer closed, or a newer request came and
        neither of the two latest requests wants any of its tiles."""
        if self._closed:
            return True
        if not cancelled():
            return False
        with self._lock:
            wanted = set(self._wanted())
        return not any(k in wanted for k in row)

    def overview_key(self) -> tuple | None:
        """The 3D read napari makes when the view turns 3D (the whole coarsest level), if it is
        small enough to render ahead (``PREFETCH_3D_VOXELS``); else None."""
        level = len(self.shapes) - 1
        if int(np.prod(self.shapes[level])) > PREFETCH_3D_VOXELS:
            return None
        return (level, tuple((0, n) for n in self.shapes[level]))

    def _prefetch_volume(self, cancelled: Cancelled) -> None:
        """When the tiles asked for are done: render the 3D overview ahead, so that switching to 3D
        shows niiv at once instead of the nearest voxels first. Any newer request cancels it."""
        key = self.overview_key() if self.prefetch_3d else None
        if key is None or (self.fast_renderer is None and self.rec.engine.device.type == "cpu"):
            return  # on a CPU only with niiv-fast: the full model's overview costs as much as a view
        with self._lock:
            if key in self._volumes or self._wanted():
                return
        self._compute_volume(key, cancelled)

    def _encode_together(self, keys: list[TileKey], cancelled: Callable[[], bool]) -> None:
        """Encode the slices of several tiles of one plane at once, over the union of their crops,
        so that neighbouring tiles share the encoder's work on their halos (each tile then runs
        only the decoder). Stops between encoder batches when ``cancelled`` (the layer closed: an
        xy plane is every xz slice of the volume)."""
        index = [self._tile_index(k) for k in keys]
        union = _union(index)
        level, axis = keys[0][0], keys[0][1]
        self._renderer(fast=level > 0).encode(self._grid(level, union, axis), cancelled=cancelled)

    def _evict(self, keep: int = 1) -> None:
        """Least recently used tiles out past ``cache_bytes``, each image with its map, but never
        the ``keep`` most recent (the row just made; call with the lock held)."""
        total = sum(t.nbytes for t in self._tiles.values()) + sum(t.nbytes for t in self._maps.values())
        while total > self.cache_bytes and len(self._tiles) > keep:
            key, old = self._tiles.popitem(last=False)
            dropped = self._maps.pop(key, None)
            total -= old.nbytes + (0 if dropped is None else dropped.nbytes)

    def _report(self, exc: BaseException) -> None:
        """Each distinct failure once (every tile of a NaN region fails alike: one message, not
        one per tile); repeats only to the log."""
        message = f"{type(exc).__name__}: {exc}"
        with self._lock:
            repeat = message in self._reported
            self._reported.add(message)
        if repeat:
            log.debug("niiv tile failed again: %s", message)
        elif self.on_error is None:
            log.error("niiv tile failed", exc_info=exc)
        else:
            self.on_error(exc)

    def close(self) -> None:
        """Stop computing tiles (within one decoding step); cached tiles stay readable."""
        self._closed = True
        self._worker.close()
        if self._preview_worker is not None:
            self._preview_worker.close()

    # -- saving --------------------------------------------------------------------------------
    def write_ome_zarr(self, path: str, kind: str = "niiv", contrast: tuple[float, float] | None = None) -> str:
        """Reconstruct level 0 in full into a new OME-Zarr pyramid, with this layer's settings and
        geometry (atomic: nothing is left under ``path`` if it fails); ``kind`` 'confidence': its map.
        ``contrast``: the display window written (the layer's contrast limits), else the normalisation's."""
        from .export import write_isotropic
        from .reconstructor import BlockReconstruction

        job = BlockReconstruction(
            self.renderer.view.data, self.norm, self.rec.model, self.rec.settings, self.geometry, self.out_dtype
        )
        window = tuple(contrast) if contrast is not None else (self.norm.low, self.norm.high)
        if kind == "confidence":
            job, window = job.confidence_map(), confidence.contrast_limits(self.norm)
        write_isotropic(path, job, contrast=window, on_progress=self.on_write_progress)
        return path


def _union(indices: list[tuple[slice, slice, slice]]) -> tuple[slice, slice, slice]:
    """The smallest region holding every region of ``indices``."""
    return tuple(slice(min(i[a].start for i in indices), max(i[a].stop for i in indices)) for a in range(3))  # type: ignore[return-value]


def _paste(out: np.ndarray, index: tuple[slice, ...], tile: np.ndarray, tile_index: tuple[slice, ...], a: int, b: int):
    """Copy the part of ``tile`` (at ``tile_index``) that falls inside the request ``index``."""
    dst, src = [slice(None)] * 3, [slice(None)] * 3
    for axis in (a, b):
        lo = max(index[axis].start, tile_index[axis].start)
        hi = min(index[axis].stop, tile_index[axis].stop)
        dst[axis] = slice(lo - index[axis].start, hi - index[axis].start)
        src[axis] = slice(lo - tile_index[axis].start, hi - tile_index[axis].start)
    out[tuple(dst)] = tile[tuple(src)]
