"""npe2 sample data: real anisotropic volumes to try niiv on, from $NIIV_DATA_DIR or downloaded once and cached.

- ``fibsem_anisotropic``: Janelia FlyEM FIB-SEM of the Drosophila distal medulla (released with NeuroProof,
  repository janelia-flyem/neuroproof_examples; Creative Commons Attribution, see LICENSE.txt there), an
  isotropic 10 nm cube pooled by 8 along z, with the cube itself as ground truth.
- ``epfl_hippocampus``: EPFL CVLab FIB-SEM of mouse hippocampus, every 8th slice kept, as distributed by
  cbmi-group/IsoVEM; terms not stated by the distributor; for evaluation only.

The FIB-SEM cube, downloaded or in $NIIV_DATA_DIR, is checked against a pinned sha256 of the array it decodes to
(what the layers show); the EPFL file, from a fixed commit, only for being a 3D 8-bit TIFF (see ``EPFL_URL``). A
download that fails is refused and dropped from the cache instead of shown; a file in $NIIV_DATA_DIR that fails (or
cannot be read) is refused in words and left alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..data import check_volume, pool_axis
from ..errors import NiivInputError
from .reader import contrast_limits

LayerData = tuple[Any, dict[str, Any], str]

FIBSEM_ATTRIBUTION = (
    "Janelia FlyEM project, HHMI Janelia Research Campus: distal medulla FIB-SEM data released with NeuroProof "
    "(github.com/janelia-flyem/neuroproof_examples, training_sample2)"
)
FIBSEM_LICENCE = "Creative Commons Attribution (LICENSE.txt in janelia-flyem/neuroproof_examples)"
FIBSEM_ALPHA = 8
# napari's units and axes, as the reader gives them, so that every layer made from a sample (live,
# lazy, saved) agrees with it and napari's scale bar says nm
NANOMETRE_ZYX = {"units": ("nanometer",) * 3, "axis_labels": ("z", "y", "x")}

# One 8-bit PNG per z slice, stacked in name order into medulla_b (250^3, 10 nm isotropic).
_FIBSEM_BASE = (
    "https://raw.githubusercontent.com/janelia-flyem/neuroproof_examples/"
    "ce839e17deaf4c01153827c6d028dfecfbb4b958/training_sample2/grayscale_maps"
)
_FIBSEM_SLICES = range(2600, 2850)
# sha256 of the stacked uint8 array's bytes (C order, shape 250^3), not of any file: the PNGs carry no
# pinned hashes of their own, and this checks exactly what the layers show.
MEDULLA_B_SHA256 = "6660e2270cb80a92cb3317f53e2fe8c664508da3c70a7d56393f0de319fbeda0"

EPFL_URL = (
    "https://raw.githubusercontent.com/cbmi-group/IsoVEM/8ab23c6ef12f3d8be1d4fead3edb0fb1696c1fde/data/epfl/test_8.tif"
)
EPFL_SOURCE = "EPFL CVLab hippocampus FIB-SEM, crop distributed by cbmi-group/IsoVEM (data/epfl/test_8.tif)"
# Not pinned by a hash: the file could not be fetched where this was written, and whether the copy in the shared
# data folder ("crop distributed in cbmi-group/IsoVEM", 32 x 256 x 256) is this file or a crop of it could not be
# verified: a pin taken from a crop would refuse every real download. To pin it, on a machine with a network:
# pooch.retrieve(EPFL_URL, known_hash="sha256:<the file's hash>"), keeping the 3D 8-bit check. The URL names a
# fixed commit, whose content git addresses by hash; a download that is not a 3D 8-bit TIFF (truncated, an error
# page) is refused and dropped from the cache.
EPFL_TERMS = "terms not stated by the distributor; for evaluation only"


def local_data_dir() -> Path | None:
    """$NIIV_DATA_DIR, the shared data folder, when set: tests and offline machines then need no download."""
    value = os.environ.get("NIIV_DATA_DIR")
    return Path(value) if value else None


def _local_file(*parts: str) -> Path | None:
    root = local_data_dir()
    path = root.joinpath(*parts) if root is not None else None
    return path if path is not None and path.is_file() else None


def _read_local(path: Path, name: str) -> np.ndarray:
    """The sample file ``name`` in $NIIV_DATA_DIR, read whole; a file tifffile cannot read (truncated, not a
    TIFF) is refused in words, naming the file and what to do, instead of tifffile's internals (the user's
    file is left alone)."""
    import tifffile

    try:
        return np.asarray(tifffile.imread(path))
    except Exception as exc:  # TiffFileError, ValueError ("failed to read ... bytes"), OSError, MemoryError...
        reason = f"{type(exc).__name__}: {_root_cause(exc)}"
    raise NiivInputError(
        f"the sample file {path} could not be read ({reason}): it is damaged or not the sample; put the shared "
        f"copy of {name} there, or unset NIIV_DATA_DIR to download it"
    )


def array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def fibsem_urls() -> list[str]:
    """The 250 z slices of medulla_b, in stacking order."""
    return [f"{_FIBSEM_BASE}/iso.{z}.png" for z in _FIBSEM_SLICES]


def fibsem_anisotropic() -> list[LayerData]:
    """Real FIB-SEM pooled by 8 along z (what 80 nm sections would record), and the isotropic cube it came from.

    The pooled layer is the one to reconstruct; the ground truth (hidden) is there to compare against.
    Pooled plane i averages isotropic planes 8i .. 8i+7, so its centre lies 3.5 planes (35 nm) past plane
    8i along z: the pooled layer is translated by that much to overlay the ground truth exactly. Data: Janelia FlyEM,
    Creative Commons Attribution (see the module docstring).
    """
    local = _local_file("fibsem", "medulla_b.tif")
    if local is not None:
        iso, source = _read_local(local, "fibsem/medulla_b.tif"), str(local)
        if iso.shape != (250, 250, 250) or iso.dtype != np.uint8 or array_sha256(iso) != MEDULLA_B_SHA256:
            raise NiivInputError(
                f"{local} is not the FIB-SEM sample (medulla_b, 250^3 8-bit, sha256 {MEDULLA_B_SHA256[:12]}...); "
                "put the shared copy of fibsem/medulla_b.tif there, or unset NIIV_DATA_DIR to download it"
            )
    else:
        iso, source = _download_medulla_b(), _FIBSEM_BASE
    pooled = pool_axis(iso, FIBSEM_ALPHA, axis=0)
    limits = contrast_limits(iso)  # one window for both layers, so that they compare by eye
    metadata = {
        "unit": "nanometer",
        "niiv_source": source,
        "attribution": FIBSEM_ATTRIBUTION,
        "licence": FIBSEM_LICENCE,
    }
    truth = {
        "name": "medulla_b isotropic (ground truth)",
        "scale": (10.0, 10.0, 10.0),
        **NANOMETRE_ZYX,
        "contrast_limits": limits,
        "visible": False,
        "metadata": metadata,
    }
    low = {
        "name": f"medulla_b pooled x{FIBSEM_ALPHA}",
        "scale": (10.0 * FIBSEM_ALPHA, 10.0, 10.0),
        **NANOMETRE_ZYX,
        "translate": (10.0 * (FIBSEM_ALPHA - 1) / 2, 0.0, 0.0),
        "contrast_limits": limits,
        "metadata": dict(metadata),
    }
    # The pooled layer comes last so that napari makes it the active layer, ready to reconstruct.
    return [(iso, truth, "image"), (pooled, low, "image")]


def epfl_hippocampus() -> list[LayerData]:
    """Real anisotropic EM (mouse hippocampus, 40 x 5 x 5 nm voxels, alpha 8); no ground truth.

    The TIFF carries no voxel sizes, so the scale is set here. Downloaded from cbmi-group/IsoVEM (a fixed
    commit) when $NIIV_DATA_DIR does not hold it; a download or cached copy that is not a 3D 8-bit TIFF is
    refused and deleted. Terms: not stated by the distributor; for evaluation only.
    """
    local = _local_file("anisotropic_em", "epfl_hippocampus.tif")
    if local is None:
        import pooch

        cache = pooch.os_cache("napari-niiv")
        local = Path(_fetch("anisotropic_em/epfl_hippocampus.tif", EPFL_URL, path=cache, progressbar=True))
        data = verify_download(local)
    else:
        data = _read_local(local, "anisotropic_em/epfl_hippocampus.tif")
        if data.ndim != 3 or data.dtype != np.uint8:
            raise NiivInputError(
                f"{local} is not the EM sample (a 3D 8-bit TIFF; it holds {data.ndim}D {data.dtype}); put the shared "
                "copy of anisotropic_em/epfl_hippocampus.tif there, or unset NIIV_DATA_DIR to download it"
            )
    check_volume(data)
    meta = {
        "name": "epfl_hippocampus",
        "scale": (40.0, 5.0, 5.0),
        **NANOMETRE_ZYX,
        "contrast_limits": contrast_limits(data),
        "metadata": {"unit": "nanometer", "niiv_source": str(local), "attribution": EPFL_SOURCE, "licence": EPFL_TERMS},
    }
    return [(data, meta, "image")]


def _fetch(local: str, url: str, **options: Any) -> str:
    """pooch.retrieve of ``url``; without a network (or the server), one message saying what to do
    instead of the HTTP library's traceback (``local``: the file NIIV_DATA_DIR can hold instead)."""
    import pooch

    try:
        return pooch.retrieve(url, known_hash=None, **options)
    except Exception as exc:  # requests' ConnectionError, HTTPError, timeouts; OSError for the cache
        host = urlsplit(url).netloc or url
        root = local_data_dir()
        # set, but without the file (a typo, an unmounted share): say so, or the user looks for the network
        where = f"NIIV_DATA_DIR ({root}) holds no {local}, and " if root is not None else ""
        raise NiivInputError(
            f"{where}the sample could not be downloaded from {host} ({type(exc).__name__}: {_root_cause(exc)}); "
            f"check the network, or point NIIV_DATA_DIR at a folder holding {local}"
        ) from exc


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a chain (requests -> urllib3 -> socket): "[Errno -2] Name or service not known"
    says more than urllib3's "HTTPSConnectionPool(host=..., port=443): Max retries exceeded with url: ..."."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def verify_download(path: Path) -> np.ndarray:
    """The EPFL sample read from ``path`` if it is a 3D 8-bit volume; otherwise delete the file (so the next
    try downloads afresh) and say so."""
    import tifffile

    try:
        data = tifffile.imread(path)
    except Exception:  # a truncated or foreign file: tifffile raises TiffFileError, ValueError, OSError...
        data = None
    if data is not None and data.dtype == np.uint8 and data.ndim == 3:
        return data
    Path(path).unlink(missing_ok=True)
    raise NiivInputError(
        f"the downloaded EM sample is not a 3D 8-bit TIFF (truncated, or the server sent something else); the "
        f"cached file {path} was deleted: try again, or point NIIV_DATA_DIR at a folder holding "
        "anisotropic_em/epfl_hippocampus.tif"
    )


def _download_medulla_b() -> np.ndarray:
    """Fetch the 250 PNG slices into the pooch cache (once), stack them and check the pinned array hash."""
    import imageio.v3 as iio
    import pooch
    from napari.utils import progress

    folder = Path(pooch.os_cache("napari-niiv")) / "medulla_b"
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)  # pooch logs each unhashed file's hash: 250 lines of noise
    try:
        files = [
            _fetch("fibsem/medulla_b.tif", url, fname=url.rsplit("/", 1)[1], path=folder)
            for url in progress(fibsem_urls(), desc="Downloading FIB-SEM sample (250 slices)")
        ]
    finally:
        logger.setLevel(level)
    try:
        stack = np.stack([iio.imread(f) for f in files])
    except (OSError, ValueError):
        stack = None
    return verify_stack(stack, folder)


def verify_stack(stack: np.ndarray | None, folder: Path) -> np.ndarray:
    """Return the stack if it is medulla_b byte for byte; otherwise drop the cached slices (so the next try
    downloads afresh) and say so."""
    if stack is not None and stack.dtype == np.uint8 and array_sha256(stack) == MEDULLA_B_SHA256:
        return stack
    shutil.rmtree(folder, ignore_errors=True)
    raise NiivInputError(
        f"the downloaded FIB-SEM slices do not match the pinned sha256 {MEDULLA_B_SHA256}; the cached files in "
        f"{folder} were deleted: try again, or point NIIV_DATA_DIR at a folder holding fibsem/medulla_b.tif"
    )
