"""napari state -> the plain numbers of :mod:`napari_niiv.inference.viewport`, and the checks a layer must pass."""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np
from napari.layers import Image, Layer

from ..data.normalise import Normalisation, fit_normalisation
from ..errors import NiivInputError
from ..inference.viewport import Camera, Frame, ViewGrid, finest_spacing, view_grid
from .gui_timing import napari_work

# Work cap for one view: a 4K HiDPI screen would otherwise ask for 30+ megapixels.
MAX_VIEW_PIXELS = 4_000_000


def check_layer(layer: Layer | None) -> Image:
    """The layer niiv can reconstruct, or a message that says what to pick instead."""
    if layer is None:
        raise NiivInputError("no layer selected: open a 3D volume (File > Open, or File > Open Sample > niiv)")
    if not isinstance(layer, Image):
        kind = layer.__class__.__name__  # a PublicOnlyProxy (menu commands) forwards __class__
        raise NiivInputError(f"'{layer.name}' is a {kind} layer; niiv reconstructs intensities: pick an Image layer")
    if layer.rgb:
        raise NiivInputError(f"'{layer.name}' is RGB; niiv needs a single-channel volume: split the channels first")
    if layer.ndim < 3:
        raise NiivInputError(f"'{layer.name}' is {layer.ndim}D; niiv needs a 3D (z, y, x) volume")
    if layer.ndim > 3:
        raise NiivInputError(
            f"'{layer.name}' is {layer.ndim}D; niiv works on one 3D (z, y, x) volume: "
            "split time points or channels into separate layers first"
        )
    units_problem = _units_problem(layer)
    if units_problem is not None:
        raise NiivInputError(units_problem)
    placement = _placement(layer)
    if placement is None:
        raise NiivInputError(
            f"'{layer.name}' is rotated or sheared (its rotate, shear or affine); niiv needs an axis-aligned "
            "layer: reset them (napari's console: `layer.rotate = 0`, `layer.shear = 0`, `layer.affine = None`)"
        )
    flipped = [axis for axis, size in zip("zyx", placement[0], strict=True) if not size > 0]
    if flipped:
        raise NiivInputError(
            f"'{layer.name}' has a negative or zero scale on {', '.join(flipped)} (a flip); niiv needs positive "
            "voxel sizes: flip the data itself instead (e.g. numpy.flip) and make the scale positive"
        )
    return layer


def _units_problem(layer: Image) -> str | None:
    """Why niiv cannot take the units of ``layer``'s three axes, or None: they must all be one
    length unit (or napari's "pixel": none). napari itself shows a layer in micrometres on z and
    nanometres in y and x converted, but niiv's voxel sizes, alpha, outputs and stores all take one
    unit, and a time axis (seconds) is no z."""
    units = tuple(getattr(layer, "units", None) or ())[-3:]
    if len(units) < 3:
        return None
    names = [str(u) for u in units]
    for axis, unit, name in zip("zyx", units, names, strict=True):
        if name not in ("pixel", "dimensionless") and "[length]" not in str(getattr(unit, "dimensionality", "")):
            return (
                f"'{layer.name}' has the unit '{name}' on {axis}, which is not a length: niiv reconstructs z between "
                "xy planes of one volume; if this axis is time or channels, pick a 3D (z, y, x) volume instead, and if "
                "it is z, give it a length unit (napari's console: `layer.units = 'nanometer'`, with `layer.scale` in "
                "nanometres)"
            )
    if len(set(names)) > 1:
        return (
            f"'{layer.name}' has different units on z, y, x ({', '.join(names)}); niiv needs one unit for all three: "
            "give the voxel sizes in one unit (napari's console, e.g. `layer.units = 'nanometer'` and "
            "`layer.scale = (z, y, x)` in nanometres)"
        )
    return None


def axis_aligned_placement(
    scale: Any, translate: Any, affine: Any, rotate: Any = None, shear: Any = None
) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    """(voxel size, translation) in the world of the last three axes, from napari's data-to-world
    map ``affine(rotate/shear(scale * index) + translate)`` with a diagonal affine folded in
    (``scale * d``, ``translate * d + shift``); None when it rotates or shears."""
    affine = np.asarray(affine, dtype=np.float64)
    linear, shift = affine[-4:-1, -4:-1], affine[-4:-1, -1]
    if rotate is not None and not np.allclose(np.asarray(rotate)[-3:, -3:], np.eye(3)):
        return None
    if shear is not None and not np.allclose(shear, 0):
        return None
    if not np.allclose(linear, np.diag(np.diag(linear))):
        return None
    d = np.diag(linear)
    voxel = np.asarray(scale, dtype=np.float64)[-3:] * d
    origin = np.asarray(translate, dtype=np.float64)[-3:] * d + shift
    return tuple(float(v) for v in voxel), tuple(float(t) for t in origin)  # type: ignore[return-value]


def _placement(layer: Image) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    return axis_aligned_placement(layer.scale, layer.translate, layer.affine.affine_matrix, layer.rotate, layer.shear)


def layer_voxel_size(layer: Image) -> tuple[float, float, float]:
    """The layer's voxel size in the world (z, y, x), its diagonal affine included."""
    placement = _placement(layer)
    return placement[0] if placement is not None else tuple(float(s) for s in layer.scale[-3:])  # type: ignore[return-value]


def layer_source(layer: Any) -> str | None:
    """The file or URL a layer was read from, whichever reader opened it (niiv's records it in the
    metadata, napari's and napari-ome-zarr's in ``layer.source``); None for data made in Python."""
    source = (layer.metadata or {}).get("niiv_source") or getattr(getattr(layer, "source", None), "path", None)
    return str(source) if source else None


def described_source(layer: Any) -> str | None:
    """What a layer holds, for the records of what niiv makes from it (a saved store's input, a
    fine-tuning card's source): its file, or for a layer of a napari-niiv sample that layer of the
    sample and the file it was made from (the FIB-SEM sample's pooled layer is not its file, the
    isotropic ground truth); None for data made in Python."""
    source = layer_source(layer)
    sample = getattr(getattr(layer, "source", None), "sample", None)  # napari's Open Sample sets it
    if sample is None:
        return source
    return f"'{layer.name}' of the napari-niiv sample {sample[-1]}, from {source or 'its data'}"


def level0(layer: Image) -> Any:
    """The full-resolution data of a layer, multiscale or not."""
    return layer.data[0] if layer.multiscale else layer.data


@napari_work
def insert_layer(viewer: Any, index: int, layer: Layer) -> None:
    """Insert ``layer`` at ``index`` and leave the selection as it was: the user's volume stays the
    selected layer (the one the dock and napari's menus act on). napari's insert selects the new
    layer, and each change of the selected layer rebuilds the layer-controls panel (~50-100 ms of
    the GUI thread, twice when the input is then selected again); here the selection's events are
    held while it is put back, so nothing sees a change that did not happen. Timed as a handler of
    its own (:func:`~.gui_timing.napari_work`): what remains is napari building the layer's
    visual and controls."""
    selection = viewer.layers.selection
    selected, active = set(selection), selection.active
    with selection.events.blocker_all():
        viewer.layers.insert(index, layer)
        if active is not None:
            selection.active = active
        else:
            selection.clear()
            selection.update(selected)


# napari 0.9 on software OpenGL (Mesa llvmpipe: no GPU) crashes at the next repaint when two
# layers are removed with no repaint between them (napari alone: remove two of three images in one
# turn of the event loop, resize the window). The plugin's own removals (a live layer and its map,
# a whole-volume layer's map after the user removed the layer) go one at a time, this long apart:
# a timer this long runs after the repaint the removal before posted (a 0 ms one ran before it).
REMOVAL_GAP_MS = 50
_REMOVALS: weakref.WeakKeyDictionary[Any, list[Layer]] = weakref.WeakKeyDictionary()


def remove_layers(viewer: Any, layers: list[Layer], now: bool = True) -> None:
    """Remove ``layers`` from ``viewer`` one by one, ``REMOVAL_GAP_MS`` apart; with ``now`` the
    first at once, unless removals are already waiting (from napari's own removal of a layer:
    ``now=False``, as napari's repaint for that one is still to come). Layers already gone are skipped."""
    from qtpy.QtCore import QTimer

    queue = _REMOVALS.get(viewer)
    waiting = queue is not None
    if queue is None:
        queue = _REMOVALS[viewer] = []
    new = [layer for layer in layers if layer is not None and layer not in queue]
    queue.extend(new)
    # Layers left alone in the viewer until their turn (the live layers of an input just closed)
    # are hidden at once: drawn alone at the repaint before their removal, a live layer (one
    # plane at the slider's position) crashed napari on software OpenGL, every time once the view
    # was done. Only then: hiding the confidence map of a whole-volume layer just removed, over its
    # input, crashed it at the next repaint instead.
    if all(layer in queue for layer in viewer.layers):
        for layer in new if waiting or not now else new[1:]:
            if layer.visible:
                layer.visible = False
    if waiting:
        return

    def step() -> None:
        while queue:
            layer = queue.pop(0)
            if layer in viewer.layers:
                viewer.layers.remove(layer)
                QTimer.singleShot(REMOVAL_GAP_MS, step)  # the next, or the end of this one's gap
                return
        _REMOVALS.pop(viewer, None)

    if now:
        step()
    else:
        QTimer.singleShot(REMOVAL_GAP_MS, step)


def layer_frame(layer: Image) -> Frame:
    """The layer's grid in the world (a diagonal affine folded into scale and translate)."""
    shape = tuple(int(s) for s in level0(layer).shape[-3:])
    placement = _placement(layer)
    if placement is None:  # not axis-aligned: check_layer refuses it before any view is made
        placement = (tuple(float(s) for s in layer.scale[-3:]), tuple(float(t) for t in layer.translate[-3:]))
    return Frame(shape, *placement)  # type: ignore[arg-type]


def layer_unit(layer: Image) -> str | None:
    """The layer's spatial unit as an NGFF name ("micrometer"), or None when napari says "pixel"
    (no physical unit known); units of the last axis stand for all three."""
    units = getattr(layer, "units", None)
    name = str(units[-1]) if units else None
    if name in (None, "", "pixel", "dimensionless"):
        return (layer.metadata or {}).get("unit")
    return name


def layer_units(layer: Image) -> tuple[str, str, str]:
    """napari units for a layer niiv makes from ``layer`` (live, whole-volume): :func:`layer_unit`
    on all three axes, "pixel" when none is known, so that napari sees them agree."""
    return (layer_unit(layer) or "pixel",) * 3


def layer_geometry(layer: Image, settings: Any, voxel: tuple[float, float, float] | None = None) -> Any:
    """Where the isotropic output of ``layer`` goes in the world (:func:`output_geometry` of its
    scale, or ``voxel`` instead, translate and unit): what the lazy layer, its save and the live
    layer all use."""
    from ..inference.geometry import output_geometry

    frame = layer_frame(layer)
    voxel = frame.scale if voxel is None else voxel
    return output_geometry(frame.shape, settings.alpha, settings.scale, voxel, frame.translate, layer_unit(layer))


def store_geometry(layer: Image, settings: Any) -> Any:
    """Where a saved store of ``layer``'s reconstruction puts its voxels (Save isotropic volume...,
    File > Save of the whole-volume layer): :func:`layer_geometry`, except for a layer without
    voxel sizes (the same scale on z and x/y and no unit: a file that gave none) at an alpha typed
    in the dock. Its store gets what ``niiv reconstruct --alpha`` writes for such a file: the input's
    z voxel taken as alpha in-plane voxels, so the output voxels are isotropic ((1, 1, 1) at scale
    1), never (1/alpha, 1, 1), which every other reader shows squashed. The layers in napari keep
    :func:`layer_geometry`: they overlay the input as napari shows it."""
    if layer_alpha(layer) is not None or layer_unit(layer) is not None:
        return layer_geometry(layer, settings)
    _, sy, sx = layer_frame(layer).scale
    return layer_geometry(layer, settings, (settings.alpha * sx, sy, sx))


def layer_alpha(layer: Image) -> float | None:
    """z voxel over in-plane voxel from the layer's scale; None when the scale is isotropic
    (usually: the file gave no voxel sizes)."""
    sz, _, sx = layer_voxel_size(layer)
    return None if np.isclose(sz, sx) else sz / sx


def world_per_layer_unit(viewer: Any, layer: Image) -> float:
    """How many of the viewer's world units one unit of ``layer`` spans. When every layer's units
    are of one kind, napari shows them all in the smallest unit (a layer in micrometres beside one
    in nanometres is drawn, and the camera and sliders move, in nanometres: 1000); when they are
    not (a layer in "pixel" beside one in nanometres), it shows the plain numbers: 1."""
    world = getattr(viewer.layers, "units", None)
    units = tuple(getattr(layer, "units", None) or ())
    if not world or not units:
        return 1.0
    try:
        factor = float((1 * units[-1]).to(world[-1]).magnitude)
    except Exception:  # pint could not relate them: napari shows the plain numbers then
        return 1.0
    return factor if np.isfinite(factor) and factor > 0 else 1.0


def current_camera(viewer: Any, pixel_ratio: float = 1.0, per_unit: float = 1.0) -> Camera:
    """The camera in the units of a layer of which one unit spans ``per_unit`` world units."""
    cam = viewer.scene.camera
    size = viewer.canvas.viewbox_size(viewer.layers)
    center = tuple(float(c) / per_unit for c in cam.center[-2:])
    return Camera(center, float(cam.zoom) * per_unit, (float(size[0]), float(size[1])), pixel_ratio)  # type: ignore[arg-type]


def current_grid(
    viewer: Any, layer: Image, output_scale: float, pixel_ratio: float = 1.0, alpha: float | None = None
) -> ViewGrid | None:
    """What the viewer shows of ``layer`` now, as a sample grid in the layer's units (napari
    converts what is drawn in them: :func:`world_per_layer_unit`); None in 3D, when off screen,
    or when the layer is no longer one niiv can show (its data made 2D, a rotation set while the
    view runs: :func:`check_layer` says why; nothing is drawn for it). ``alpha``, the anisotropy niiv runs at, gives
    the output's z voxel (the layer's z scale over alpha): finer than the in-plane voxel for a
    layer without voxel sizes at a typed alpha, and then z is sampled that finely
    (:func:`~napari_niiv.inference.viewport.view_grid`)."""
    dims = viewer.dims
    if dims.ndisplay != 2:
        return None
    try:
        check_layer(layer)
    except NiivInputError:
        return None
    offset = dims.ndim - 3  # the layer's axes are the last three world axes
    displayed = tuple(int(a) - offset for a in dims.order[-2:])
    if min(displayed) < 0:
        return None
    sliced = ({0, 1, 2} - set(displayed)).pop()
    frame = layer_frame(layer)
    per_unit = world_per_layer_unit(viewer, layer)
    point = float(dims.point[sliced + offset]) / per_unit
    finest_z = frame.scale[0] * output_scale / float(alpha) if alpha is not None else None
    return view_grid(
        current_camera(viewer, pixel_ratio, per_unit),
        frame,
        displayed,  # type: ignore[arg-type]
        point,
        finest_spacing(frame, output_scale),
        MAX_VIEW_PIXELS,
        finest_z,
    )


# Lazy layer data (dask, zarr) up to this size is read into memory once, off the GUI thread, by
# what renders it (the live view, a whole-volume layer): a view reads its region in many plane
# batches, each read of a lazy array decodes whole chunks again, and a whole-volume layer's
# interpolated stand-ins are read on napari's thread (0.4-1.7 s per slider step from a chunked
# 64 MiB OME-Zarr store, where napari shows the input itself in 30-50 ms).
IN_MEMORY_BYTES = 512 * 2**20


def readable(data: Any) -> Any:
    """``data`` as niiv's renderers read it: a lazy array small enough for memory, read once."""
    if isinstance(data, np.ndarray):
        return data
    nbytes = int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize
    if nbytes > IN_MEMORY_BYTES:
        return data
    return np.asarray(data.compute() if hasattr(data, "compute") else data)


_SHARED_READS = threading.Lock()


class SharedRead:
    """An input layer's data as niiv's renderers read it (into memory when small: ``readable``) and
    its normalisation (fitted on the layer's own data, as a save or `niiv reconstruct` fits it):
    read once, by whichever asks first (a live view, a whole-volume layer), which then share one
    copy. One asking while another reads waits for that read instead of reading it all again: a
    setting changed during the first read of a lazy volume started one more whole read per change,
    none of which could stop (5 changes on a 400 MiB store: 6.5 GiB, where one read takes 1.25).
    Kept only while something uses it (a weak reference), and only for the data it was read from."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._source: weakref.ref | None = None
        self._data: weakref.ref | None = None
        self._norm: Normalisation | None = None
        self._epoch = 0  # counts forget(): a read from before one is not handed out
        self._read_epoch = -1

    @classmethod
    def of(cls, layer: Any) -> SharedRead:
        """The layer's (made the first time), forgotten whenever its data event fires, live view or
        not (data edited while live was off kept the old normalisation)."""
        with _SHARED_READS:  # a whole-volume layer is prepared on a thread
            shared = getattr(layer, "_niiv_shared_read", None)
            if shared is None:
                shared = cls()
                layer._niiv_shared_read = shared
                layer.events.data.connect(shared.forget)
        return shared

    def forget(self, event: Any = None) -> None:
        """The layer's data changed (perhaps in place): read it again next time. On the GUI
        thread: never waits for a read in progress."""
        self._epoch += 1

    def cached(self, source: Any) -> tuple[Any, Normalisation] | None:
        """What :meth:`get` would hand out now without reading, else None (the GUI thread: never
        waits for a read; get stays the authority)."""
        data = self._data() if self._data is not None else None
        fresh = self._source is not None and self._source() is source and self._read_epoch == self._epoch
        return (data, self._norm) if data is not None and fresh else None  # type: ignore[return-value]

    def get(self, source: Any) -> tuple[Any, Normalisation]:
        """``source`` as read and its normalisation (on a worker thread: this may read it all)."""
        with self._lock:
            epoch = self._epoch
            data = self._data() if self._data is not None else None
            same = self._source is not None and self._source() is source and self._read_epoch == epoch
            if data is not None and same:
                return data, self._norm  # type: ignore[return-value]
            data = readable(source)
            norm = fit_normalisation(source, in_memory=data)  # as a save or `niiv reconstruct` of the layer
            self._source, self._data, self._norm = weakref.ref(source), weakref.ref(data), norm
            self._read_epoch = epoch
            return data, norm
