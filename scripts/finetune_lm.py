"""Does a 10-minute fine-tune in the viewer add to niiv-lm out of the box? Runs the napari panel's
own job (``training.finetune.fine_tune_job``, as Start does, without a window) on the light-microscopy
volume's planes z 0-40 (``--planes``) at alpha 4 with the psf degradation, and writes the weights the
model card scores beside niiv-lm on the held-out planes z 40-60. ``--start runs/lm-split/niiv-lm.safetensors
--planes 20:40`` is the three-way split: a twin of niiv-lm trained on z 0-20 (recipe ``lm-split``)
fine-tuned on planes it never saw.

Run: ``.venv/bin/python scripts/finetune_lm.py [--minutes 10] [--start niiv-lm] [--out PATH]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from napari_niiv.data import open_volume
from napari_niiv.training.finetune import FineTuneRequest, fine_tune_job
from napari_niiv.training.regions import whole

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NIIV_DATA_DIR", ROOT.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--start", default="niiv-lm", help="weights to start from (default: the shipped niiv-lm)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (the panel's default: 1e-4)")
    parser.add_argument("--planes", default="0:40", help="z planes to learn from, START:STOP (z 40-60 are the test)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "lm" / "lm-finetuned.safetensors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vol = open_volume(DATA / "lm" / "cells3d_nuclei.tif")
    lo, hi = (int(v) for v in args.planes.split(":"))
    if hi > 40:
        parser.error("z 40-60 are the held-out test: learn from planes below 40")
    data = vol.data[lo:hi]
    request = FineTuneRequest(
        data=data,
        scale=tuple(vol.voxel_size),
        name=f"cells3d_nuclei z {lo}-{hi}",
        source=str(DATA / "lm" / "cells3d_nuclei.tif"),
        alpha=4.0,
        start_weights=args.start,
        regions=(whole(data.shape),),
        out=args.out,
        steps=100_000,
        minutes=args.minutes,
        degradation="psf",
        lr=args.lr,
    )
    job = fine_tune_job(request)
    checks: list[tuple[int, dict]] = []
    job.on_check = lambda step, m: checks.append((step, m))
    t0 = time.perf_counter()
    job.start()
    job.join()
    if isinstance(job.result, BaseException):
        raise job.result
    print(f"{job.ended}: {job.result.steps_done} steps in {time.perf_counter() - t0:.0f} s -> {args.out}")
    for step, m in checks:
        print(f"  step {step}: panel's held-out check {m['cf_psnr_gain']:+.2f} dB CF-PSNR vs bilinear")


if __name__ == "__main__":
    main()
