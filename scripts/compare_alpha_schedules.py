"""One model for every alpha, or one per alpha? Trained at equal budget and scored held out.

Three runs continue niiv-v1-fibsem-a8 (the first round's alpha-8 thick model, niiv-em's own
start) for the same minutes on one thread each, with niiv-em's recipe (lr 2e-4, thick and thin
sections mixed) and only the alpha schedule changed:

- ``mixed``: alpha uniform in 2-12 per step, fractions included (niiv-em's schedule);
- ``a4``: alpha 4 only; ``a12``: alpha 12 only;
- ``mixed-acq``: ``mixed`` with alpha and the sections' thickness given to the encoder
  (``NiivConfig.acquisition_embedding``, a learned shift of its features, zero at the start so it
  starts from the same model), trained for exactly the steps ``mixed`` took (same seed, so the same
  batches): the one difference is what the model is told.

Each is scored at alpha 4 and 12, thick and thin sections, on held-out FIB-SEM (medulla_b z
122-250, 128^3 cubes, xz slices, never trained on), with bicubic as a row. The question is how
much of a per-alpha model's gain at its own alpha the single model keeps at the same budget per
model (the per-alpha set costs one budget per alpha).

Runs resume from their checkpoints in runs/alpha-schedules/NAME/ (a run already finished is
scored, not retrained). Prints the tables and writes out/alpha-schedules.json.

Run: ``.venv/bin/python scripts/compare_alpha_schedules.py [--minutes 15] [--cubes 2] [--only mixed,a4,a12,mixed-acq]``
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from fibsem_recipes import EM_INIT, EM_RECIPE, FIBSEM_Z_RANGES, budget, fibsem_volumes

from napari_niiv.data import open_volume
from napari_niiv.data.degrade import Degradation
from napari_niiv.inference.weights import load_weights, resolve_weights
from napari_niiv.training.evaluate import cut_cubes, evaluate, format_table, interpolation, niiv_method
from napari_niiv.training.train import TrainSettings, train

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NIIV_DATA_DIR", ROOT.parent / "shared" / "data"))
SCHEDULES = {"mixed": (2.0, 12.0), "a4": (4.0, None), "a12": (12.0, None), "mixed-acq": (2.0, 12.0)}
EMBEDDED = {"mixed-acq": "mixed"}  # schedules with alpha given to the encoder: the run whose steps they take
SCORED = (4.0, 12.0)


def run_schedule(name: str, minutes: float, threads: int) -> Path:
    """Train (or resume) one schedule: niiv-em's recipe and start with its alpha range replaced;
    its weights file (a finished run is kept as it is)."""
    out = ROOT / "runs" / "alpha-schedules" / name / f"{name}.safetensors"
    if out.exists():
        return out
    alpha, alpha_max = SCHEDULES[name]
    run_budget = budget(minutes, threads)
    init = resolve_weights(EM_INIT)
    out.parent.mkdir(parents=True, exist_ok=True)
    if name in EMBEDDED:
        twin = load_weights(run_schedule(EMBEDDED[name], minutes, threads))
        run_budget |= {"steps": int(twin.card["steps"]), "time_budget": None}
    settings = TrainSettings(
        **{**EM_RECIPE, "alpha": alpha, "alpha_max": alpha_max},
        acquisition_embedding=name in EMBEDDED,
        **run_budget,
    )
    r = train(
        fibsem_volumes(DATA),
        settings,
        out,
        init=init,
        resume=out.with_name(f"{name}.ckpt.safetensors").exists(),
        z_ranges=FIBSEM_Z_RANGES,
        progress=False,
        card={"schedule": name},
    )
    print(f"{name}: {r.steps_done} steps in {r.seconds:.0f} s", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=15.0, help="training budget of each run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cubes", type=int, default=2, help="held-out 128^3 cubes scored (4 cover the planes)")
    p.add_argument("--only", default=",".join(SCHEDULES), help="schedules to train and score")
    p.add_argument("--json", type=Path, default=ROOT / "out" / "alpha-schedules.json")
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(SCHEDULES)
    if unknown:
        raise SystemExit(f"unknown schedules {sorted(unknown)}; choose from {sorted(SCHEDULES)}")
    trained = {n: load_weights(run_schedule(n, args.minutes, args.threads)) for n in names}
    steps = {n: (w.card or {}).get("steps") for n, w in trained.items()}
    cubes = cut_cubes(np.asarray(open_volume(DATA / "fibsem" / "medulla_b.tif").data[122:250]), 128)[: args.cubes]
    methods = {"bicubic": interpolation("bicubic")}
    methods |= {n: niiv_method(w.model) for n, w in trained.items()}
    result: dict = {"minutes": args.minutes, "init": EM_INIT, "steps": steps, "cubes": len(cubes), "scores": {}}
    for degradation in ("thick", "thin"):
        for alpha in SCORED:
            scores = evaluate(cubes, alpha, methods, degradation=Degradation(degradation))
            print(f"\nalpha {alpha:g}, {degradation}, {len(cubes)} held-out cubes, xz slices:")
            print(format_table(scores))
            base = next(s for s in scores if s.method == "bicubic")
            result["scores"][f"{degradation} a{alpha:g}"] = {
                s.method: {"cf_psnr_vs_bicubic": s.cf_psnr - base.cf_psnr, "psnr_vs_bicubic": s.psnr - base.psnr}
                for s in scores
            }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
