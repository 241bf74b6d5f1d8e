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

from napari_niiv.data import open_volume
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.inference.weights import load_weights, save_weights
from napari_niiv.training.evaluate import cut_cubes, evaluate, format_table, interpolation, niiv_method

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
    return cut_cubes(data, 128)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shipped", nargs="+")
    parser.add_argument("--equal-budget")
    parser.add_argument("--cards-only", action="store_true", help="rewrite the .md cards from weights/ metadata")
    args = parser.parse_args()
    if args.cards_only:
        write_all_markdown()
        return
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
        methods[name + " +yz"] = niiv_method(w.model, InferenceSettings(alpha=1.0, orientation="both"))
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
        print(f"wrote {target}")
    write_all_markdown()


def comparison(cards: dict[str, dict]) -> str:
    """The v2-against-v1 section, from the scores stored in both cards."""
    v1 = cards.get("niiv-v1-fibsem-a8", {}).get("test", {})
    v2 = cards.get("niiv-v2-fibsem-a8", {}).get("test", {})
    if not (v1 and v2 and v2.get("equal_budget_v2")):
        return ""
    base = v1["bilinear"]
    g1 = (v1["niiv"]["cf_psnr"] - base["cf_psnr"], v1["niiv"]["psnr"] - base["psnr"])
    g2 = (v2["equal_budget_v2"]["cf_psnr"] - base["cf_psnr"], v2["equal_budget_v2"]["psnr"] - base["psnr"])
    return f"""
## v2 against v1 at the same budget

With the same training budget (85 min, one core each, side by side) v1 gained {g1[0]:+.2f} dB CF-PSNR /
{g1[1]:+.2f} dB PSNR over bilinear on the test cubes and v2 {g2[0]:+.2f} / {g2[1]:+.2f} dB: **v2 does not beat
v1 here.** What was measured:

- On this CPU a v2 training step costs about 1.65x a v1 step, alone (0.72 s vs 0.44 s, one thread) and
  side by side (85 min gave v2 5,960 steps and v1 10,004). v2's gather of 9 interpolated keys and values
  per query and the backward of grid_sample are memory-bound; v1's 16 convolution blocks are not.
- At equal steps the validation curves are close, v1 slightly ahead (step 3,500: v1 +2.12, v2 +2.05 dB;
  step 6,000: v1 +2.34, v2 +2.16 dB). The v1 configuration has a 16-block encoder (1.50 M parameters, 69 px
  receptive field) against v2's 6 blocks (0.78 M, 29 px); the attention over interpolated latents, whose z
  neighbours are 1/8 input pixel apart, adds little in this regime.
- The paper's +0.2 dB of v2 over a v1-like model came from 900 epochs over 350 cubes on a GPU; these runs
  are a few percent of that training. Resuming v2 for 25 more minutes on both cores added only
  {v2["niiv"]["cf_psnr"] - v2["equal_budget_v2"]["cf_psnr"]:+.2f} dB.

v2 is the default because it is the model napari-niiv implements and it clears the targets; under this CPU
budget v1 scored higher, and `--weights niiv-v1-fibsem-a8` selects it.
"""


def write_all_markdown() -> None:
    loaded = {p.stem: load_weights(p) for p in sorted((ROOT / "weights").glob("*.safetensors"))}
    section = comparison({name: w.card for name, w in loaded.items()})
    for name, w in loaded.items():
        params = sum(p.numel() for p in w.model.parameters())
        path = ROOT / "weights" / f"{name}.md"
        write_markdown(path, name, w.card, w.model.config.to_dict(), w.normalisation, params, section)
        print(f"wrote {path}")


def write_markdown(path: Path, name: str, card: dict, config: dict, norm, params: int, section: str = "") -> None:
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
{section}"""
    path.write_text(text)


if __name__ == "__main__":
    main()
