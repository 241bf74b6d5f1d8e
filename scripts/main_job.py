"""The main job: niiv on real data, end to end, headless.

1. Real anisotropic FIB-SEM (EPFL hippocampus, every 8th plane kept, alpha 8): reconstruct an xz
   slice with the shipped weights and save nearest | bilinear | niiv side by side as a PNG.
2. Write an isotropic OME-Zarr of a sub-volume through the `niiv` command line.
3. Score niiv against interpolation on a held-out isotropic FIB-SEM cube (simulated alpha 8).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from napari_niiv.cli import main as niiv
from napari_niiv.data import fit_normalisation, open_volume
from napari_niiv.evaluate import evaluate, format_table, interpolation, niiv_method
from napari_niiv.reconstruct import NormalisedView, Reconstructor, output_shape
from napari_niiv.weights import available_weights, load_weights, resolve_weights

DATA = Path(os.environ.get("NIIV_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
OUT = Path(os.environ.get("NIIV_MAIN_OUT", Path(__file__).resolve().parents[1] / "out" / "main"))


def xz_panels(path: Path, alpha: float, y: int) -> np.ndarray:
    vol = open_volume(path)
    weights = load_weights(resolve_weights(None))
    norm = fit_normalisation(vol.data)
    view = NormalisedView(vol.data, norm)
    shape = output_shape(vol.shape, alpha)
    index = (slice(0, shape[0]), slice(y, y + 1), slice(0, shape[2]))
    ours = Reconstructor(weights.model, alpha).block(view, shape, index, "xz")[:, 0]
    low = view[:, y : y + 1, :]
    near = interpolation("nearest")(low, alpha, (shape[0], 1, shape[2]))[:, 0]
    bil = interpolation("bilinear")(low, alpha, (shape[0], 1, shape[2]))[:, 0]
    gap = np.ones((shape[0], 8), np.float32)
    return np.concatenate([near, gap, bil, gap, ours], axis=1)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    print("weights:", ", ".join(available_weights()))
    panels = xz_panels(DATA / "anisotropic_em" / "epfl_hippocampus.tif", 8.0, 128)
    png = OUT / "epfl_xz_nearest_bilinear_niiv.png"
    Image.fromarray((np.clip(panels, 0, 1) * 255).astype(np.uint8)).save(png)
    print(f"saved {png}  (xz slice of real alpha-8 FIB-SEM: nearest | bilinear | niiv)")

    # Sub-volume through the command line, as a user would.
    sub = OUT / "cremi_a_crop.npy"
    np.save(sub, np.asarray(open_volume(DATA / "anisotropic_em" / "cremi_a.tif").data[:, :96, :96]))
    code = niiv(["reconstruct", str(sub), str(OUT / "cremi_a_crop_iso.ome.zarr"), "--alpha", "10", "--overwrite"])
    if code:
        return code

    cube = np.asarray(open_volume(DATA / "fibsem" / "medulla_b.tif").data[122:250, :128, :128])
    methods = {m: interpolation(m) for m in ("nearest", "bilinear", "bicubic")}
    for name in ("niiv-v1-fibsem-a8", "niiv-v2-fibsem-a8"):
        if name in available_weights():
            methods[name] = niiv_method(load_weights(resolve_weights(name)).model)
    print("held-out FIB-SEM cube (medulla_b z 122-250, 128^3), alpha 8 simulated, xz slices:")
    print(format_table(evaluate([cube], 8.0, methods)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
