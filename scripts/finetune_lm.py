"""Does a 10-minute fine-tune in the viewer add to niiv-lm out of the box? Runs the napari panel's
own job (``training.finetune.fine_tune_job``, as Start does, without a window) on the light-microscopy
volume's planes z 0-40 at alpha 4 with the psf degradation, and writes the weights the model card
scores beside niiv-lm on the held-out planes z 40-60.

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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--start", default="niiv-lm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "lm" / "lm-finetuned.safetensors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vol = open_volume(DATA / "lm" / "cells3d_nuclei.tif")
    data = vol.data[:40]  # z 40-60 stay unseen: the card's held-out test
    request = FineTuneRequest(
        data=data,
        scale=tuple(vol.voxel_size),
        name="cells3d_nuclei z 0-40",
        source=str(DATA / "lm" / "cells3d_nuclei.tif"),
        alpha=4.0,
        start_weights=args.start,
        regions=(whole(data.shape),),
        out=args.out,
        steps=100_000,
        minutes=args.minutes,
        degradation="psf",
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
