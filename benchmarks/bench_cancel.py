"""How long a Cancel waits: a save's block (a column of chunks) is computed by the model for
seconds, and a cancel is answered only where the computation asks for it.

One block of a save (64 x 128 x 128 output voxels) from real FIB-SEM pooled by alpha along z
(medulla_b, xz slices), with the shipped weights; after a warm-up block, a cancel is set from a timer
at several fractions of the block's time, and the wait from the cancel to the block's return is
measured. Reported as the median and largest wait, and as fractions of the whole block's time (a
ratio, so that machines compare): asked only between batches of slices, the wait was up to a whole
batch (16 slices, seconds on a laptop CPU).

Run: ``python benchmarks/bench_cancel.py [--json PATH]`` (about two minutes on 2 cores).
"""

from __future__ import annotations

import napari_niiv  # noqa: F401  first, as in the plugin and the CLI: it sets torch's OpenMP wait policy

# isort: split
import argparse
import json
import threading
import time

import numpy as np

from _common import data_file, positive, report_path, run
from napari_niiv.data import fit_normalisation, open_volume
from napari_niiv.data.degrade import pool_axis
from napari_niiv.inference.geometry import output_shape
from napari_niiv.inference.reconstructor import NormalisedView, Reconstructor
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.inference.weights import load_weights, resolve_weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="niiv-em", help="weights name or path (default niiv-em, the default model)")
    p.add_argument("--alpha", type=positive(float), default=8.0)
    p.add_argument("--cancels", type=positive(int), default=6, help="cancel times, spread over the block")
    p.add_argument("--json", type=report_path, help="also write the numbers here")
    args = p.parse_args()
    source = data_file("fibsem", "medulla_b.tif")
    iso = np.asarray(open_volume(source).data[:256, :128, :128], dtype=np.float32)
    vol = pool_axis(iso, args.alpha, 0)
    view = NormalisedView(vol, fit_normalisation(vol))
    shape = output_shape(vol.shape, args.alpha, 1.0)
    rec = Reconstructor(
        load_weights(resolve_weights(args.weights)).model, InferenceSettings(alpha=args.alpha, orientation="xz")
    )
    block = tuple(slice(0, min(n, s)) for n, s in zip((64, 128, 128), shape, strict=True))
    rec.block(view, shape, block)  # warm-up: the kernels' first calls
    t0 = time.perf_counter()
    rec.block(view, shape, block)
    whole = time.perf_counter() - t0
    print(f"{args.weights}, alpha {args.alpha:g}: one block {tuple(s.stop for s in block)} takes {whole:.2f} s")

    waits = []
    for k in range(args.cancels):
        at = whole * (k + 0.5) / args.cancels
        flag = threading.Event()
        timer = threading.Timer(at, flag.set)
        start = time.perf_counter()
        timer.start()
        out = rec.block(view, shape, block, flag.is_set)
        ended = time.perf_counter() - start
        timer.cancel()
        wait = max(0.0, ended - at) if out is None else float("nan")  # not stopped: the block ended first
        waits.append(wait)
        print(f"cancel at {at:.2f} s: {'stopped' if out is None else 'finished'} at {ended:.2f} s, waited {wait:.3f} s")
    done = [w for w in waits if np.isfinite(w)]
    if not done:  # every block ended before its cancel (a fast machine): nothing to report
        raise SystemExit(f"bench_cancel.py: error: every block ended before its cancel ({whole:.3f} s a block)")
    result = {
        "weights": args.weights,
        "alpha": args.alpha,
        "block_s": whole,
        "waits_s": waits,
        "median_wait_s": float(np.median(done)) if done else None,
        "max_wait_s": max(done) if done else None,
        "max_wait_fraction_of_block": max(done) / whole if done else None,
    }
    print(
        f"median wait {result['median_wait_s']:.3f} s, largest {result['max_wait_s']:.3f} s "
        f"({100 * result['max_wait_fraction_of_block']:.1f} % of the block)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    run(main)
