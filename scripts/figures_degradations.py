"""Pictures for the user guide: what each degradation simulates, and input | bicubic | niiv on real
anisotropic data (cremi_a: serial-section TEM, thick sections; EPFL: FIB-SEM with every 8th plane
kept, thin sections) and on held-out light microscopy (psf). Writes docs/images/degradation_*.png.

Run: ``.venv/bin/python scripts/figures_degradations.py [--out FOLDER]`` (needs weights/niiv-em and
niiv-lm; without ``--out`` it replaces the user guide's pictures).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from napari_niiv.data import open_volume
from napari_niiv.data.degrade import Degradation
from napari_niiv.data.normalise import fit_normalisation
from napari_niiv.inference.reconstructor import reconstruct_volume
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.inference.weights import load_weights, resolve_weights

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NIIV_DATA_DIR", ROOT.parent / "shared" / "data"))
OUT = ROOT / "docs" / "images"
ZOOM = 2  # pixels per voxel in the pictures


def to_u8(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((img - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def nearest_rows(low: np.ndarray, rows: int) -> np.ndarray:
    """Each section drawn as a band as thick as its spacing (what the microscope gives)."""
    idx = np.minimum((np.arange(rows) * low.shape[0]) // rows, low.shape[0] - 1)
    return low[idx]


def bicubic_rows(low: np.ndarray, rows: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(low, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(rows, low.shape[1]), mode="bicubic", align_corners=False)[0, 0].numpy()


def panel(tiles: list[tuple[str, np.ndarray]], lo: float, hi: float, path: Path) -> None:
    """Tiles side by side, each with its caption above."""
    ims = [Image.fromarray(to_u8(t, lo, hi)).resize((t.shape[1] * ZOOM, t.shape[0] * ZOOM), Image.NEAREST)
           for _, t in tiles]  # fmt: skip
    w = sum(i.width for i in ims) + 8 * (len(ims) - 1)
    h = max(i.height for i in ims) + 18
    canvas = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for (caption, _), im in zip(tiles, ims, strict=True):
        draw.text((x + 2, 2), caption, fill=0)
        canvas.paste(im, (x, 18))
        x += im.width + 8
    canvas.save(path)
    print(f"wrote {path}")


def niiv_xz(weights: str, vol: np.ndarray, alpha: float, y: int, kind: str) -> np.ndarray:
    """The xz slice ``y``, reconstructed with the model told the volume's sections (``kind``)."""
    w = load_weights(resolve_weights(weights))
    settings = InferenceSettings(alpha=alpha, orientation="xz", device="cpu", precision="fp32", degradation=kind)
    region = (slice(0, vol.shape[0]), slice(y, y + 1), slice(0, vol.shape[2]))
    out = reconstruct_volume(w.model, vol, settings, region=region, normalisation=fit_normalisation(vol))
    return out[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the pictures (default docs/images)")
    out = parser.parse_args().out
    torch.set_num_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    # 1. What each degradation simulates: a held-out FIB-SEM xz slice, alpha 8.
    iso = np.asarray(open_volume(DATA / "fibsem" / "medulla_b.tif").data[122:250, 60, :160], dtype=np.float32)
    tiles = [("isotropic truth", iso)]
    for d in (Degradation("thick"), Degradation("thin"), Degradation("psf")):
        low = d.apply(iso, 8.0, axis=0)
        tiles.append((f"{d}, alpha 8", nearest_rows(low, iso.shape[0])))
    panel(tiles, *np.percentile(iso, [0.5, 99.5]), out / "degradation_models.png")

    # 2. Real anisotropic EM: input | bicubic | niiv-em | the first round's alpha-8 thick model.
    for name, alpha, y, kind in (("cremi_a", 10.0, 160, "thick"), ("epfl_hippocampus", 8.0, 128, "thin")):
        vol = np.asarray(open_volume(DATA / "anisotropic_em" / f"{name}.tif").data)
        rows = int(vol.shape[0] * alpha)
        xz = vol[:, y, :192].astype(np.float32)
        crop = (slice(0, rows), slice(0, 192))
        tiles = [
            (f"input ({kind} sections)", nearest_rows(xz, rows)),
            ("bicubic", bicubic_rows(xz, rows)),
            (f"niiv-em (told {kind})", niiv_xz("niiv-em", vol, alpha, y, kind)[crop]),
        ]
        panel(tiles, *np.percentile(xz, [0.5, 99.5]), out / f"degradation_{name}.png")

    # 3. Light microscopy, held out: an xy plane degraded along y by psf, alpha 4.
    lm = np.asarray(open_volume(DATA / "lm" / "cells3d_nuclei.tif").data[50], dtype=np.float32)[:128, :128]
    low = Degradation("psf").apply(lm, 4.0, axis=0)
    tiles = [("psf input, alpha 4", nearest_rows(low, 128)), ("bicubic", bicubic_rows(low, 128))]
    norm = fit_normalisation(lm[None])
    for weights in ("niiv-em", "niiv-lm"):
        w = load_weights(resolve_weights(weights))
        settings = InferenceSettings(alpha=4.0, orientation="xz", device="cpu", precision="fp32", degradation="psf")
        rec = reconstruct_volume(w.model, low[:, None, :], settings, normalisation=norm)[:, 0]
        tiles.append((weights, rec[:128]))
    tiles.append(("truth", lm))
    panel(tiles, *np.percentile(lm, [0.5, 99.8]), out / "degradation_lm.png")


if __name__ == "__main__":
    main()
