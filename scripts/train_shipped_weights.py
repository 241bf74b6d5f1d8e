"""Train the shipped weights: ``python scripts/train_shipped_weights.py ARCH MINUTES [THREADS]``.

What produced weights/ (see the model cards): v2 and v1 ran side by side, one thread each, for
85 minutes (the equal-budget comparison); v2 was then resumed from its checkpoint with a 110-minute
budget on both cores. Data: medulla_a z 74-250 and medulla_b z 0-112 (xy planes); validation
(monitoring only) medulla_a z 0-64; medulla_b z 122-250 is the untouched test set.
Writes runs/ARCH/niiv-ARCH-fibsem-a8.safetensors and resumes from its checkpoint if present.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

from napari_niiv.data import open_volume
from napari_niiv.training.train import HeldOutCheck, TrainSettings, train

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NIIV_DATA_DIR", ROOT.parent / "shared" / "data"))

arch, minutes = sys.argv[1], float(sys.argv[2])
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
a = open_volume(DATA / "fibsem" / "medulla_a.tif")
b = open_volume(DATA / "fibsem" / "medulla_b.tif")
val = np.asarray(a.data[:64, :128, :128])
s = TrainSettings(
    alpha=8.0,
    architecture=arch,
    steps=1_000_000,
    time_budget=minutes * 60,
    threads=threads,
    eval_every=500,
    checkpoint_every=250,
    preview_every=0,
    seed=0,
)
r = train(
    [a, b],
    s,
    ROOT / "runs" / arch / f"niiv-{arch}-fibsem-a8.safetensors",
    resume=True,
    z_ranges=[(74, 250), (0, 112)],
    held_out=HeldOutCheck([val], 8.0),
    progress=False,
    card={
        "training_data": "medulla_a z 74-250, medulla_b z 0-112 (xy planes)",
        "validation_data": "medulla_a z 0-64, y 0-128, x 0-128",
        "test_data": "medulla_b z 122-250 (never seen in training)",
    },
)
print(json.dumps({"steps": r.steps_done, "seconds": r.seconds, "held_out": r.held_out}))
