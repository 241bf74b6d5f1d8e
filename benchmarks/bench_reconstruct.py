"""Reconstruction speed, as ratios that mean something on any machine.

Reports, in one run: seconds per 128^3 volume (alpha 8, xz, fp32: the exact model) and per megapixel
of output, the ratio to bilinear interpolation of the same volume, and the fraction of this machine's
measured matmul peak that the model's arithmetic reaches. The fast paths (bf16, compiled) and their
accuracy are in bench_inference.py. Run: ``python benchmarks/bench_reconstruct.py``.
"""

from __future__ import annotations

import napari_niiv  # noqa: F401  first, as in the plugin and the CLI: it sets torch's OpenMP wait policy

# isort: split
import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from _common import positive, report_path, run
from napari_niiv.data.degrade import THICK
from napari_niiv.inference.reconstructor import reconstruct_volume
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.inference.weights import load_weights, resolve_weights
from napari_niiv.model import NiivModel
from napari_niiv.model.flops import attention_flops, model_flops
from napari_niiv.training.evaluate import interpolation


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 2.0) -> float:
    """Best sustained GFLOP/s of an n x n matmul: the yardstick for 'fraction of peak'."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def flops_per_output_pixel(model: NiivModel, alpha: float) -> dict[str, float]:
    """Multiply-adds x 2 of one output pixel, by part (encoder and K/V amortised over the alpha
    output pixels each input pixel yields at scale 1)."""
    flops = model_flops(model)
    att_pixel, att_point = attention_flops(model)
    dec = flops["decoder_per_point"] - att_point
    enc_per_input = flops["encoder_per_pixel"] - att_pixel
    attn = att_point + att_pixel / alpha
    return {
        "decoder": dec,
        "encoder": enc_per_input / alpha,
        "attention": attn,
        "total": dec + enc_per_input / alpha + attn,
    }


def time_it(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--repeats", type=positive(int), default=3)
    parser.add_argument("--json", type=report_path)
    args = parser.parse_args()

    alpha = 8.0
    model = load_weights(resolve_weights(args.weights)).model
    rng = np.random.default_rng(0)
    low = rng.random((16, 128, 128)).astype(np.float32)  # pooled 128^3 volume; speed does not depend on content
    out_px = 128**3

    t_niiv = time_it(
        lambda: reconstruct_volume(model, low, InferenceSettings(alpha=alpha, orientation="xz", precision="fp32")),
        args.repeats,
    )
    bil = interpolation("bilinear")
    t_bil = time_it(lambda: bil(low, alpha, (128, 128, 128), THICK), args.repeats)
    flops = flops_per_output_pixel(model, alpha)
    peak = matmul_peak()
    achieved = flops["total"] * out_px / t_niiv / 1e9
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "seconds_per_128cube": t_niiv,
        "ms_per_megapixel": t_niiv / out_px * 1e6 * 1e3,
        "bilinear_seconds_per_128cube": t_bil,
        "ratio_to_bilinear": t_niiv / t_bil,
        "mflop_per_output_pixel": {k: v / 1e6 for k, v in flops.items()},
        "achieved_gflops": achieved,
        "matmul_peak_gflops_fp32": peak,
        "fraction_of_peak": achieved / peak,
    }
    print(f"machine: {result['machine']}")
    mpx, ratio = result["ms_per_megapixel"], result["ratio_to_bilinear"]
    print(f"niiv, 128^3 volume (alpha 8, xz, fp32): {t_niiv:.2f} s   = {mpx:.0f} ms per megapixel")
    print(f"bilinear, same volume:                  {t_bil * 1e3:.1f} ms  -> niiv costs {ratio:.0f}x bilinear")
    print(
        f"model arithmetic: {flops['total'] / 1e6:.3f} MFLOP per output pixel "
        f"(decoder {flops['decoder'] / 1e6:.3f}, encoder {flops['encoder'] / 1e6:.3f}, "
        f"attention {flops['attention'] / 1e6:.3f})"
    )
    print(
        f"achieved {achieved:.1f} GFLOP/s of a measured fp32 matmul peak of {peak:.1f} GFLOP/s "
        f"= {100 * result['fraction_of_peak']:.0f} % of peak"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    run(main)
