"""Evaluate trained weights on the held-out test cubes and write their model cards.

``python scripts/write_model_cards.py SHIPPED.safetensors... [--equal-budget V2_85MIN.safetensors]``

Scores every file on medulla_b z 122-250 (never used in training) with the `niiv evaluate`
protocol, stores the scores in each shipped file's metadata card, copies it into weights/ and
writes weights/NAME.md. ``--equal-budget`` adds a row for v2 stopped at v1's training budget.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from napari_niiv.cli import cube_origins
from napari_niiv.data import open_volume
from napari_niiv.evaluate import evaluate, format_table, interpolation, niiv_method
from napari_niiv.weights import load_weights, save_weights

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NIIV_DATA_DIR", ROOT.parent / "shared" / "data"))
REGION = (slice(122, 250), slice(0, 250), slice(0, 250))
COMMAND = (
    "niiv evaluate ../shared/data/fibsem/medulla_b.tif --alpha 8 --region 122:250,0:250,0:250 --cube 128 "
    "--weights niiv-v1-fibsem-a8 --weights niiv-v2-fibsem-a8 --both"
)
BUDGET = {
    "niiv-v1-fibsem-a8": "85 min on one core of a 2-core CPU, side by side with the v2 run on the other core",
    "niiv-v2-fibsem-a8": "85 min on one core side by side with the v1 run (the equal-budget comparison), then "
    "resumed from that checkpoint on both cores, the cosine schedule stretched to a 110-min budget",
}
EQUAL = "niiv-v2 at v1's budget (85 min)"


def test_cubes() -> list[np.ndarray]:
    data = np.asarray(open_volume(DATA / "fibsem" / "medulla_b.tif").data[REGION])
    return [
        data[z : z + 128, y : y + 128, x : x + 128]
        for z in cube_origins(data.shape[0], 128)
        for y in cube_origins(data.shape[1], 128)
        for x in cube_origins(data.shape[2], 128)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shipped", nargs="+")
    parser.add_argument("--equal-budget")
    args = parser.parse_args()
    methods = {m: interpolation(m) for m in ("nearest", "bilinear", "bicubic")}
    loaded = {}
    for p in args.shipped:
        w = load_weights(p)
        loaded[Path(p).stem] = w
    for name, w in sorted(loaded.items()):
        methods[name] = niiv_method(w.model)
        if name.startswith("niiv-v2") and args.equal_budget:
            methods[EQUAL] = niiv_method(load_weights(args.equal_budget).model)
    for name, w in sorted(loaded.items()):
        methods[name + " +yz"] = niiv_method(w.model, orientation="both")
    t0 = time.perf_counter()
    scores = evaluate(test_cubes(), 8.0, methods)
    table = format_table(scores)
    print(table)
    print(f"({time.perf_counter() - t0:.0f} s)")
    by_name = {s.method: s.__dict__ for s in scores}
    for name, w in loaded.items():
        card = dict(w.card)
        card["name"] = name
        card["budget"] = BUDGET.get(name, "")
        card["test"] = {
            "data": "medulla_b z 122-250 (4 cubes of 128^3 at y, x in {0, 122}), pooled by 8 along z, xz slices",
            "command": COMMAND,
            "niiv": by_name[name],
            "niiv_xz_yz": by_name[name + " +yz"],
            "bilinear": by_name["bilinear"],
            "equal_budget_v2": by_name.get(EQUAL),
            "table": table,
        }
        target = ROOT / "weights" / f"{name}.safetensors"
        save_weights(target, w.model, w.alpha, w.normalisation, card=card)
        params = sum(p.numel() for p in w.model.parameters())
        write_markdown(target.with_suffix(".md"), name, card, w.model.config.to_dict(), w.normalisation, params)
        print(f"wrote {target}")


def write_markdown(path: Path, name: str, card: dict, config: dict, norm, params: int) -> None:
    s = card["settings"]
    test = card["test"]
    gain_cf = test["niiv"]["cf_psnr"] - test["bilinear"]["cf_psnr"]
    gain_psnr = test["niiv"]["psnr"] - test["bilinear"]["psnr"]
    held = card.get("held_out") or {}
    kind = (
        "attention over the 3x3 interpolated-latent neighbourhood"
        if config["attention"]
        else 'no attention: plain bilinear latent interpolation (the 2024 "Fast" model)'
    )
    text = f"""# Model card: {name}

niiv {card["architecture"]} ({kind}), trained self-supervised for **alpha {card["alpha"]:g}** on isotropic
FIB-SEM of the *Drosophila* distal medulla (Janelia FlyEM, NeuroProof examples, CC-BY).

| | |
|---|---|
| architecture | `{json.dumps(config)}` |
| parameters | {params:,} |
| training data | {card.get("training_data")} |
| validation (monitoring only) | {card.get("validation_data")} |
| test data | {test["data"]} |
| budget | {card["budget"]} |
| steps | {card["steps"]:,} (batch {s["batch"]} crops of {s["crop"]}x{s["crop"]}, {s["points"]:,} supervised pixels each) |
| time | {card["seconds"] / 60:.0f} min of training, bf16 autocast on CPU |
| optimiser | Adam, peak lr {s["lr"]:g}, {s["warmup"]} warm-up steps, cosine decay to {s["final_lr_fraction"]:g} x peak |
| loss | L1 (MAE); last 50 steps {card["final_loss"]:.4f} |
| normalisation | percentiles {list(norm.percentiles)} of each volume (training volume: {norm.low:g}-{norm.high:g}) |
| validation gain vs bilinear | {held.get("cf_psnr_gain", float("nan")):+.2f} dB CF-PSNR, {held.get("psnr_gain", float("nan")):+.2f} dB PSNR |

## Held-out test (never seen in training)

**{gain_cf:+.2f} dB CF-PSNR and {gain_psnr:+.2f} dB PSNR over bilinear** (f_cutoff 25, xz slices,
alpha 8, mean over 512 slices of 4 cubes).

{test["table"]}

Rows marked `+yz` average the reconstructions from xz and from yz slices (`--orientation both`, the
`niiv reconstruct` default); plain rows reconstruct from xz slices only, as the paper. Seconds per
volume: fp32 on this 2-core CPU (single process, other work running); speed is measured properly by
`benchmarks/bench_reconstruct.py`. Reproduce every row but the equal-budget one with:

```bash
{test["command"]}
```

The equal-budget row is v2's checkpoint at the end of the 85 minutes it shared with v1
(`python scripts/train_shipped_weights.py v2 85` beside `... v1 85`).
"""
    path.write_text(text)


if __name__ == "__main__":
    main()
