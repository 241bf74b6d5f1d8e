"""Train the shipped weights: ``python scripts/train_shipped_weights.py RECIPE MINUTES [THREADS]``.

Recipes (each resumes from its checkpoint in runs/RECIPE/ if present, so a run longer than one
sitting is continued, not restarted):

- ``v1``, ``v2``: the first round's alpha-8 models (thick sections, from scratch; v1 and v2 ran
  side by side, one thread each, for 85 minutes: the equal-budget comparison in their cards).
- ``v2-input``: the same recipe with the attention's neighbours one input pixel apart (issue 14's
  attention experiment; run beside ``v1`` and ``v2`` at the same budget).
- ``em``: niiv-em, continued from niiv-v1-fibsem-a8 (v1 beat v2 at equal budget) over alpha 2-12
  (uniform, fractional) with thick and thin sections mixed.
- ``em-told``: the shipped niiv-em: the ``em`` recipe's model continued with the acquisition
  embedding added (the encoder is told alpha and the sections' thickness:
  ``TrainSettings.acquisition_embedding``), same data and schedule, new seed.
- ``em-focus``: the shipped niiv-em continued with half of its batches on where it was weakest
  against bicubic (thick sections at alpha 10-12, thin at 2-4.5; ``TrainSettings.focus``), the
  other half uniform as before so the rest is not forgotten; a third of the peak lr, new seed.
- ``fast``: niiv-fast, the small model of the live view's first frame (architecture ``fast``),
  distilled from niiv-em (its outputs are the targets) over alpha 2-12, thick and thin sections,
  told alpha and the sections like its teacher (``TrainSettings.acquisition_embedding``); the
  shipped one: 60 minutes from scratch on one core.
- ``fast-again``: the shipped niiv-fast distilled further from the shipped niiv-em, for when the
  default's weights change (issue 12: niiv-fast follows its teacher); a third of the peak lr.
- ``lm``: niiv-lm, continued from niiv-em on the light-microscopy volume's xy planes z 0-40
  (z 40-60 is its held-out test), psf degradation (FWHM one section spacing), alpha 2-8.
- ``lm-split``: not shipped: a twin of ``lm`` for the fine-tune test, continued from the shipped
  (told) niiv-em on z 0-20 only, so that z 20-40 stay unseen as a user's own planes for
  ``scripts/finetune_lm.py --planes 20:40`` and z 40-60 the held-out test of both.

FIB-SEM split for every recipe: training medulla_a z 74-250 and medulla_b z 0-112 (xy planes);
validation (monitoring only) medulla_a z 0-64, y 0-128, x 0-128; medulla_b z 122-250 is the
untouched test set.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from fibsem_recipes import (
    EM_INIT,
    EM_RECIPE,
    FIBSEM_SPLIT,
    FIBSEM_Z_RANGES,
    budget,
    fibsem_volumes,
)

from napari_niiv.data import open_volume
from napari_niiv.data.degrade import Degradation
from napari_niiv.inference.weights import resolve_weights
from napari_niiv.training.train import HeldOutCheck, TrainSettings, train

PSF = Degradation("psf")
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NIIV_DATA_DIR", ROOT.parent / "shared" / "data"))
LM_SPLIT = {
    "training_data": "cells3d_nuclei z 0-40 (xy planes)",
    "validation_data": "cells3d_nuclei z 40-60 xy planes (monitoring, and the held-out test)",
    "test_data": "cells3d_nuclei z 40-60: xy planes degraded along y (never seen in training)",
}

RECIPES = ("v1", "v2", "v2-input", "em", "em-told", "em-focus", "fast", "fast-again", "lm", "lm-split")
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("recipe", choices=RECIPES)
parser.add_argument("minutes", type=float, help="training time of this sitting's run, in all (resumes included)")
parser.add_argument("threads", type=int, nargs="?", default=1, help="torch threads (default 1)")
args = parser.parse_args()
if not (0 < args.minutes < float("inf") and args.threads > 0):
    parser.error("MINUTES and THREADS must be above 0")
recipe, minutes, threads = args.recipe, args.minutes, args.threads
common = budget(minutes, threads)
init = None
if recipe in ("v1", "v2", "v2-input", "em", "em-told", "em-focus", "fast", "fast-again"):
    volumes, z_ranges, card = fibsem_volumes(DATA), FIBSEM_Z_RANGES, dict(FIBSEM_SPLIT)
    held = HeldOutCheck([np.asarray(volumes[0].data[:64, :128, :128])], 8.0)
if recipe in ("v1", "v2", "v2-input"):
    name = f"niiv-{recipe}-fibsem-a8"
    settings = TrainSettings(alpha=8.0, architecture=recipe, eval_every=500, seed=0, **common)
elif recipe == "em":
    name, init = "niiv-em", resolve_weights(EM_INIT)
    settings = TrainSettings(**EM_RECIPE, **common)
    card["fine_tuned_from"] = EM_INIT
elif recipe == "em-told":
    name, init = "niiv-em", ROOT / "runs" / "em" / "niiv-em.safetensors"  # the ``em`` recipe's output
    settings = TrainSettings(**{**EM_RECIPE, "seed": 4}, acquisition_embedding=True, **common)
    card["fine_tuned_from"] = "niiv-em (acquisition embedding added)"
elif recipe == "em-focus":
    name, init = "niiv-em", ROOT / "weights" / "niiv-em.safetensors"  # the shipped (told) niiv-em
    focus = dict(focus="thick@10-12,thin@2-4.5", focus_fraction=0.5)
    settings = TrainSettings(
        **{**EM_RECIPE, "seed": 5, "lr": 7e-5, "warmup": 50}, acquisition_embedding=True, **focus, **common
    )
    card["fine_tuned_from"] = "niiv-em (told; continued with focus on its weakest cases)"
elif recipe in ("lm", "lm-split"):
    lm = open_volume(DATA / "lm" / "cells3d_nuclei.tif")
    volumes, z_ranges, card = [lm], [(0, 40)], dict(LM_SPLIT)
    name, init = "niiv-lm", ROOT / "runs" / "em" / "niiv-em.safetensors"
    card["fine_tuned_from"] = "niiv-em (the first, untold: before the acquisition embedding)"
    if recipe == "lm-split":
        z_ranges, init = [(0, 20)], ROOT / "weights" / "niiv-em.safetensors"
        card["fine_tuned_from"] = "niiv-em (told, as shipped)"
        card["training_data"] = "cells3d_nuclei z 0-20 (xy planes; z 20-40 kept for the fine-tune test)"
    # Monitoring on the held-out xy planes, degraded along y: transpose (z, y, x) -> (y, z, x).
    held = HeldOutCheck([np.asarray(lm.data[40:60]).transpose(1, 0, 2)[:, :, :128]], 4.0, degradation=PSF)
    settings = TrainSettings(
        alpha=2.0,
        alpha_max=8.0,
        degradations="psf",
        architecture="v1",
        lr=2e-4,
        warmup=50,
        batch=8,
        eval_every=250,
        seed=2,
        acquisition_embedding=recipe == "lm-split",  # the told niiv-em it continues
        **common,
    )
elif recipe in ("fast", "fast-again"):
    name = "niiv-fast"
    again = recipe == "fast-again"
    if again:
        init = ROOT / "weights" / "niiv-fast.safetensors"
        card["fine_tuned_from"] = "niiv-fast (distilled further from the current niiv-em)"
    # Distilled from the shipped default (niiv-em): its outputs on the same crops are the targets.
    settings = TrainSettings(
        alpha=2.0,
        alpha_max=12.0,
        degradations="thick,thin",
        architecture="fast",
        teacher="niiv-em",  # the shipped weights, by the name their card records
        acquisition_embedding=True,  # told alpha and the sections, like its teacher
        lr=3e-4 if again else 1e-3,
        warmup=50 if again else 100,
        eval_every=1000,
        seed=6 if again else 3,
        **common,
    )
    card["distilled_from"] = "niiv-em"
else:
    sys.exit(f"unknown recipe {recipe!r}: v1, v2, v2-input, em, em-told, em-focus, lm, lm-split, fast or fast-again")

r = train(
    volumes,
    settings,
    ROOT / "runs" / recipe / f"{name}.safetensors",
    init=init,
    resume=(ROOT / "runs" / recipe / f"{name}.ckpt.safetensors").exists(),
    z_ranges=z_ranges,
    held_out=held,
    progress=False,
    card=card,
)
print(json.dumps({"steps": r.steps_done, "seconds": r.seconds, "held_out": r.held_out}))
