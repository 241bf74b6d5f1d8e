"""Is niiv-em's shortfall at one alpha and degradation a budget problem or a data limit? Continue the
shipped niiv-em at that alpha and degradation only, then score both on the held-out cubes.

``python scripts/probe_specialist.py DEGRADATION ALPHA MINUTES [CUBES]``: continues
``weights/niiv-em.safetensors`` (told) for MINUTES on one thread with niiv-em's recipe, the alpha
range replaced by ALPHA +- 0.5 and the degradations by DEGRADATION, into runs/probe-DEG-aALPHA/;
then prints bicubic, niiv-em and the specialist at ALPHA and DEGRADATION on CUBES held-out 128^3
cubes of medulla_b z 122-250 (xz slices). If even the specialist does not reach a target there,
more training of the one model will not either."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from fibsem_recipes import EM_RECIPE, FIBSEM_Z_RANGES, budget, fibsem_volumes

from napari_niiv.data import open_volume
from napari_niiv.data.degrade import Degradation
from napari_niiv.inference.weights import load_weights
from napari_niiv.training.evaluate import cut_cubes, evaluate, format_table, interpolation, niiv_method
from napari_niiv.training.train import TrainSettings, train

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NIIV_DATA_DIR", ROOT.parent / "shared" / "data"))

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("degradation", choices=("thick", "thin", "psf"))
parser.add_argument("alpha", type=float)
parser.add_argument("minutes", type=float)
parser.add_argument("cubes", type=int, nargs="?", default=4, help="held-out 128^3 cubes scored (default 4)")
args = parser.parse_args()
if not (2 <= args.alpha <= 12 and 0 < args.minutes < float("inf") and args.cubes > 0):
    parser.error("ALPHA must be from 2 to 12 (niiv-em's range), MINUTES and CUBES above 0")
kind, alpha, minutes, cubes_n = args.degradation, args.alpha, args.minutes, args.cubes
shipped = ROOT / "weights" / "niiv-em.safetensors"
out = ROOT / "runs" / f"probe-{kind}-a{alpha:g}" / "specialist.safetensors"
if not out.exists():
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = TrainSettings(
        **{**EM_RECIPE, "alpha": max(2.0, alpha - 0.5), "alpha_max": alpha + 0.5, "degradations": kind},
        **budget(minutes, 1),
    )
    train(
        fibsem_volumes(DATA),
        settings,
        out,
        init=shipped,
        resume=out.with_name("specialist.ckpt.safetensors").exists(),
        z_ranges=FIBSEM_Z_RANGES,
        progress=False,
    )
cubes = cut_cubes(np.asarray(open_volume(DATA / "fibsem" / "medulla_b.tif").data[122:250]), 128)[:cubes_n]
specialist = load_weights(out)
methods = {
    "bicubic": interpolation("bicubic"),
    "niiv-em": niiv_method(load_weights(shipped).model),
    "specialist": niiv_method(specialist.model),
}
scores = evaluate(cubes, alpha, methods, degradation=Degradation(kind))
print(f"alpha {alpha:g}, {kind}, {len(cubes)} held-out cubes, xz slices; specialist: {specialist.card['steps']} steps")
print(format_table(scores))
base = next(s for s in scores if s.method == "bicubic")
print(json.dumps({s.method: round(s.cf_psnr - base.cf_psnr, 3) for s in scores}))
