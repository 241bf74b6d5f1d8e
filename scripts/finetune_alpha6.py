"""Does fine-tuning help? The shipped default weights (niiv-em, trained over alpha 2-12), fine-tuned
for a few CPU minutes at alpha 6 on one FIB-SEM volume with the napari panel's settings, scored at
alpha 6 on held-out slices.

Volume: medulla_b (isotropic FIB-SEM). Fine-tuning learns from its xy planes z 0-112 (what the
panel does on a volume: lateral planes pooled by alpha); the test is the paper's protocol on the
planes it never saw, z 122-250 (four 128^3 cubes pooled by 6 along z, xz slices). Prints the table
and writes out/finetune_alpha6/{weights, result.json}.

Run: ``.venv/bin/python scripts/finetune_alpha6.py [--minutes 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from napari_niiv.data import open_volume
from napari_niiv.data.degrade import THICK
from napari_niiv.inference.weights import DEFAULT_WEIGHTS, load_weights, resolve_weights
from napari_niiv.training.evaluate import (
    cut_cubes,
    evaluate,
    format_table,
    intensity_range,
    interpolation,
    niiv_method,
    simulate,
)
from napari_niiv.training.metrics import cf_psnr
from napari_niiv.training.train import fine_tune_settings, train

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NIIV_DATA_DIR", ROOT.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--alpha", type=float, default=6.0)
    parser.add_argument("--lr", type=float, default=1e-4, help="the panel's default: 1e-4")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "finetune_alpha6")
    parser.add_argument("--skip-training", action="store_true", help="score the weights already in --out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    vol = open_volume(DATA / "fibsem" / "medulla_b.tif")
    settings = fine_tune_settings(args.alpha, steps=100_000, minutes=args.minutes, lr=args.lr, device="cpu")
    weights = args.out / f"medulla_b-a{args.alpha:g}.safetensors"
    if not args.skip_training:
        for stale in (weights, weights.with_name(weights.stem + ".ckpt.safetensors")):
            stale.unlink(missing_ok=True)
        t0 = time.perf_counter()
        result = train(
            [vol], settings, weights, init=resolve_weights(DEFAULT_WEIGHTS), z_ranges=[(0, 112)], progress=False
        )
        print(f"fine-tuned {result.steps_done} steps in {time.perf_counter() - t0:.0f} s (alpha {args.alpha:g})")
    card = load_weights(weights).card or {}
    cubes = cut_cubes(np.asarray(vol.data[122:250]), 128)
    methods = {
        "bilinear": interpolation("bilinear"),
        f"{DEFAULT_WEIGHTS} (shipped)": niiv_method(load_weights(resolve_weights(DEFAULT_WEIGHTS)).model),
        f"fine-tuned at alpha {args.alpha:g}": niiv_method(load_weights(weights).model),
    }
    scores = evaluate(cubes, args.alpha, methods)
    print(f"held-out medulla_b z 122-250, {len(cubes)} cubes of 128^3, alpha {args.alpha:g}, xz slices:")
    print(format_table(scores))
    base, shipped, tuned = scores
    paired = paired_slices(cubes, args.alpha, methods[list(methods)[1]], methods[list(methods)[2]])
    print(
        f"per xz slice, fine-tuned minus shipped CF-PSNR: mean {paired['mean']:+.3f} dB, 95% CI "
        f"[{paired['ci95'][0]:+.3f}, {paired['ci95'][1]:+.3f}], better on {paired['better']:.0%} of "
        f"{paired['slices']} slices"
    )
    summary = {
        "alpha": args.alpha,
        "minutes": args.minutes,
        "lr": args.lr,
        "steps": card.get("steps"),
        "paired_slices": paired,
        "scores": {s.method: {"cf_psnr": s.cf_psnr, "psnr": s.psnr, "ssim": s.ssim} for s in scores},
        "gain_over_shipped": {"cf_psnr": tuned.cf_psnr - shipped.cf_psnr, "psnr": tuned.psnr - shipped.psnr},
        "shipped_over_bilinear": {"cf_psnr": shipped.cf_psnr - base.cf_psnr, "psnr": shipped.psnr - base.psnr},
    }
    (args.out / "result.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["gain_over_shipped"]))


def paired_slices(cubes: list[np.ndarray], alpha: float, shipped, tuned) -> dict[str, object]:
    """CF-PSNR difference slice by slice (same slices, same ground truth): is the mean gain larger
    than the slice-to-slice spread? A normal 95% interval over slices (they are not independent
    in the strict sense: neighbouring slices are alike, so it is optimistic)."""
    diffs = []
    for iso in cubes:
        lo, hi = intensity_range(iso)
        low, gt = simulate((np.asarray(iso, np.float32) - lo) / (hi - lo), alpha)
        a, b = shipped(low, alpha, gt.shape, THICK), tuned(low, alpha, gt.shape, THICK)
        for y in range(gt.shape[1]):
            diffs.append(cf_psnr(gt[:, y], b[:, y]) - cf_psnr(gt[:, y], a[:, y]))
    d = np.asarray(diffs)
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
    return {
        "slices": int(d.size),
        "mean": float(d.mean()),
        "ci95": [float(d.mean() - half), float(d.mean() + half)],
        "better": float((d > 0).mean()),
    }


if __name__ == "__main__":
    main()
