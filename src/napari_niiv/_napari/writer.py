"""npe2 writer: an image layer saved as OME-Zarr (NGFF 0.5) block by block, so a lazy layer is never
loaded whole, placed in the world where napari shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data.io import check_voxel_size, common_unit, ngff_unit, tidy, volume_name
from ..errors import NiivInputError
from ..inference.store import ArrayBlocks, Layout, partial_path, zarr_store_holding
from ..inference.store import write_ome_zarr as write_store
from .layer_view import axis_aligned_placement


class WriterRefused(RuntimeError):
    """Why the writer refused a layer. Not a ValueError (as :class:`NiivInputError` is): napari's
    ``layers.save(..., plugin=...)`` turns a writer's ValueError into a vague "not a valid writer"
    warning, and this message must reach the user."""


def write_ome_zarr(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save one image layer at ``path`` with its scale, translate, units and contrast limits (what
    napari's layer state gives; a diagonal ``affine`` is folded into scale and translate).

    A multiscale layer whose first level knows how to write itself (niiv's lazy isotropic layer runs the
    full reconstruction) is delegated to it; any other multiscale layer is saved at its finest level.
    An existing path is never replaced (a FileExistsError), and a failed write leaves no store behind;
    every other refusal is a :class:`WriterRefused`.
    """
    try:
        return _write(Path(path), data, meta)
    except NiivInputError as exc:
        raise WriterRefused(str(exc)) from exc


def _write(out: Path, data: Any, meta: dict[str, Any]) -> list[str]:
    out = _store_path(out)
    path = str(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; napari-niiv never overwrites a store: save under another name")
    _check_not_inside_data(out)
    partial = partial_path(out)
    if partial.exists():  # the store's writer would remove it (a run that is not resumed starts afresh)
        raise NiivInputError(
            f"cannot save {out}: {partial.name} beside it holds an unfinished save of that name, which saving "
            "again with the same settings (Save isotropic volume... or niiv reconstruct) continues and this save "
            "would discard; save under another name, or finish or remove it first"
        )
    if meta.get("multiscale") or isinstance(data, (list, tuple)):  # napari passes its MultiScaleData
        if hasattr(data[0], "write_ome_zarr"):
            limits = meta.get("contrast_limits")
            data[0].write_ome_zarr(path, None if limits is None else tuple(float(c) for c in limits))
            return [path]
        data = data[0]
    shape = tuple(int(s) for s in data.shape)
    if len(shape) != 3 or meta.get("rgb"):
        raise NiivInputError(
            f"napari-niiv saves 3D (z, y, x) single-channel volumes as OME-Zarr; this layer has shape {shape}"
            f"{' (RGB)' if meta.get('rgb') else ''}: save it with napari's built-in writers (e.g. as .tif) instead"
        )
    voxel, translation, unit = layer_placement(meta)
    contrast = meta.get("contrast_limits")
    layout = Layout(
        shape,  # type: ignore[arg-type]
        np.dtype(data.dtype).str,
        voxel_size=voxel,
        unit=unit,
        translation=translation,
        name=volume_name(out),  # my.data.v2.ome.zarr: "my.data.v2", not "my"
        ngff="0.5",
        contrast=tuple(float(c) for c in contrast) if contrast is not None else None,  # type: ignore[arg-type]
    )

    from napari.utils import progress

    with progress(total=100, desc=f"Saving {out.name}") as bar:

        def advance(done: int, total: int) -> None:
            bar.update(int(100 * done / total) - bar.n)

        write_store(out, layout, ArrayBlocks(data), on_progress=advance)
    return [path]


# file formats a name may end in that an OME-Zarr store (a folder) must not be given
_FILE_SUFFIXES = (
    ".tif",
    ".tiff",
    ".png",
    ".jpg",
    ".jpeg",
    ".npy",
    ".npz",
    ".h5",
    ".hdf5",
    ".nii",
    ".gz",
    ".mrc",
    ".csv",
)


def _store_path(out: Path) -> Path:
    """The store's path: as given when it ends in .zarr, else with .ome.zarr added (napari adds it
    for ``layer.save(name, plugin=...)``, but not when its Save dialog has this writer chosen and a
    name is typed without it). A name ending in another file format's extension is refused: an
    OME-Zarr folder named ``vol.tif`` would pass for a TIFF."""
    if out.name.lower().endswith(".zarr"):
        return out
    if out.suffix.lower() in _FILE_SUFFIXES:
        raise NiivInputError(
            f"cannot save {out}: napari-niiv saves OME-Zarr stores (folders named .ome.zarr), not {out.suffix} "
            f"files; name it {out.stem}.ome.zarr, or choose napari's own writer for {out.suffix}"
        )
    return out.with_name(out.name + ".ome.zarr")


def _check_not_inside_data(out: Path) -> None:
    """Refuse a path inside a zarr store (``data.ome.zarr/copy``: the new store would become a member
    of the user's store, which may be the one the layer reads) or under a file (``cells.tif/x``)."""
    for parent in out.parents:
        if parent.is_file():
            raise NiivInputError(f"cannot save {out}: {parent} is a file, not a folder; choose a path in a folder")
    store = zarr_store_holding(out)
    if store is not None:
        raise NiivInputError(
            f"cannot save {out}: it lies inside the zarr store {store}, and napari-niiv never writes into an "
            "existing store; save it beside that store instead"
        )


def layer_placement(meta: dict[str, Any]) -> tuple[tuple[float, float, float], tuple[float, float, float], str | None]:
    """(voxel size, translation, unit) of a 3D layer from napari's layer state.

    napari maps data to world as ``affine(scale * index + translate)``; OME-Zarr has only a scale and
    a translation, so a diagonal affine is folded in (``scale * d``, ``translate * d + shift``) and a
    rotation or shear is refused. Per-axis units are brought to one unit (NGFF names); napari's
    "pixel" means none, and then the unit niiv's reader kept in the layer metadata is used.
    """
    rotate = np.asarray(meta.get("rotate", np.eye(3)), dtype=np.float64)[-3:, -3:]
    shear = np.asarray(meta.get("shear", (0.0,) * 3), dtype=np.float64)
    if not np.allclose(rotate, np.eye(3)) or not np.allclose(shear, 0):
        raise NiivInputError(
            "this layer is rotated or sheared, which OME-Zarr (scale and translation only) cannot store: "
            "reset its rotate and shear (napari's console: `layer.rotate = 0`, `layer.shear = 0`) or save it with "
            "napari's built-in writers"
        )
    placement = axis_aligned_placement(
        meta.get("scale", (1.0,) * 3), meta.get("translate", (0.0,) * 3), meta.get("affine", np.eye(4))
    )
    if placement is None:
        raise NiivInputError(
            "this layer's affine transform rotates or shears it, which OME-Zarr (scale and translation only) "
            "cannot store: use a diagonal affine (scale and translation) or save it with napari's built-in writers"
        )
    voxel, origin = list(placement[0]), list(placement[1])
    try:
        check_voxel_size(voxel)
    except NiivInputError:
        raise NiivInputError(
            f"this layer's scale (with its affine) is {tuple(voxel)}: OME-Zarr needs positive voxel sizes; "
            "flip the data itself instead of using a negative scale"
        ) from None
    units = [ngff_unit(u, strict=True) for u in (meta.get("units") or (None,) * 3)[-3:]]
    if all(u is None for u in units):
        units = [ngff_unit((meta.get("metadata") or {}).get("unit"), strict=True)] * 3
    if None in units and any(units):
        given = ", ".join(f"{a} {u or 'pixel (no unit)'}" for a, u in zip("zyx", units, strict=True))
        raise NiivInputError(
            f"this layer's axes have units {given}: a store gives one length unit to all three, and napari-niiv "
            "does not guess the size of an axis without one; set all three (napari's console: "
            "`layer.units = ('micrometer',) * 3`, scaling the axes without one to match) or none"
        )
    voxel_common, unit = common_unit(voxel, units)
    factors = [c / v for c, v in zip(voxel_common, voxel, strict=True)]
    translation = [tidy(t * f) for t, f in zip(origin, factors, strict=True)]
    return tuple(voxel_common), tuple(translation), unit  # type: ignore[return-value]
