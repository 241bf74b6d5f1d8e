"""Evaluate trained weights on the held-out test cubes and write their model cards.

For each weights file: copy it into weights/, score it with `niiv evaluate` semantics on
medulla_b z 122-250 (never used in training), store the scores in the file's metadata card and
write weights/NAME.md. Run after training: ``python scripts/write_model_cards.py runs/v2/x.safetensors ...``
"""

from __future__ import annotations

import json
import os
import sys
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


def test_cubes() -> list[np.ndarray]:
    data = np.asarray(open_volume(DATA / "fibsem" / "medulla_b.tif").data[REGION])
    return [
        data[z : z + 128, y : y + 128, x : x + 128]
        for z in cube_origins(data.shape[0], 128)
        for y in cube_origins(data.shape[1], 128)
        for x in cube_origins(data.shape[2], 128)
    ]


def main(paths: list[str]) -> None:
    cubes = test_cubes()
    methods = {m: interpolation(m) for m in ("nearest", "bilinear", "bicubic")}
    loaded = {}
    for p in paths:
        w = load_weights(p)
        name = Path(p).stem
        loaded[name] = w
        methods[name] = niiv_method(w.model)
        methods[name + " +yz"] = niiv_method(w.model, orientation="both")
    t0 = time.perf_counter()
    scores = evaluate(cubes, 8.0, methods)
    table = format_table(scores)
    print(table)
    print(f"({time.perf_counter() - t0:.0f} s)")
    by_name = {s.method: s.__dict__ for s in scores}
    for name, w in loaded.items():
        card = dict(w.card)
        card["name"] = name
        card["test"] = {
            "data": "medulla_b z 122-250 (4 cubes of 128^3 at y, x in {0, 122}), pooled by 8 along z, xz slices",
            "command": COMMAND,
            "niiv": by_name[name],
            "bilinear": by_name["bilinear"],
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
    minutes = card["seconds"] / 60
    text = f"""# Model card: {name}

niiv {card["architecture"]} ({
        "attention over the 3x3 interpolated-latent neighbourhood"
        if config["attention"]
        else 'no attention: plain bilinear latent interpolation (2024 "Fast" model)'
    }), trained self-supervised for
**alpha {card["alpha"]:g}** on isotropic FIB-SEM of the *Drosophila* distal medulla (Janelia FlyEM,
NeuroProof examples, CC-BY; `../shared/data/fibsem`).

| | |
|---|---|
| architecture | {json.dumps(config)} |
| parameters | {sum(1 for _ in [0]) and ""}see `niiv info weights/{name}.safetensors` |
| training data | {card.get("training_data")} |
| validation (monitoring only) | {card.get("validation_data")} |
| test data | {test["data"]} |
| steps | {card["steps"]} (batch {s["batch"]} crops of {s["crop"]}x{s["crop"]}, {s["points"]} supervised pixels each) |
| optimiser | Adam, peak lr {s["lr"]:g}, {s["warmup"]} warm-up steps, cosine to {
        s["final_lr_fraction"]:g} x peak over the time budget |
| time | {minutes:.0f} min on 1 thread of a 2-core CPU, bf16 autocast (v1 and v2 ran side by side, one core each) |
| normalisation | percentiles {norm.percentiles} of the training volume: low {norm.low:g}, high {
        norm.high:g} (applied per volume at inference) |
| final training loss (L1, last 50 steps) | {card["final_loss"]:.4f} |
| validation CF-PSNR gain vs bilinear | {held.get("cf_psnr_gain", float("nan")):+.2f} dB |

## Held-out test (never seen in training)

**{gain_cf:+.2f} dB CF-PSNR and {gain_psnr:+.2f} dB PSNR over bilinear** (f_cutoff 25, xz slices, alpha 8).

{test["table"]}

Rows marked `+yz` average the reconstructions from xz and from yz slices (`--orientation both`,
the `niiv reconstruct` default); the plain rows reconstruct from xz slices only, as the paper.
Seconds per volume are for the CPU of the machine that wrote this card, with other work running.
Reproduce with:

```bash
{test["command"]}
```
"""
    path.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
