"""Inference speed of each engine path, as ratios that mean something on any machine, in one run.

For fp32, bf16 (autocast where the hardware has it) and torch.compile'd paths, with the shipped v2
weights at alpha 8:

- seconds per 128^3 volume and ms per megapixel of output (xz slices; two held-out medulla_b cubes);
- the CF-PSNR / PSNR difference of each path to fp32 on those cubes (real FIB-SEM, never trained on);
- the decoder MLP's GFLOP/s as a fraction of this machine's measured matmul peak in the same dtype;
- the one-off compile cost (first volume minus steady state);
- time to the first progressive frame (niiv at 1/4 resolution) and to the full frame for a
  1920x1080 xz view at screen resolution, with the interpolated preview for scale.

Run: ``python benchmarks/bench_inference.py``; writes ``out/bench/inference.json``.
"""

from __future__ import annotations

import napari_niiv  # noqa: F401  first, as in the plugin and the CLI: it sets torch's OpenMP wait policy

# isort: split
import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from _common import data_file, report_path, run
from bench_reconstruct import matmul_peak
from napari_niiv.data import fit_normalisation, open_volume
from napari_niiv.data.degrade import pool_axis
from napari_niiv.inference.engine import CHUNK_POINTS, InferenceEngine
from napari_niiv.inference.reconstructor import Reconstructor
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.inference.viewport import ViewGrid
from napari_niiv.inference.views import ViewRenderer
from napari_niiv.inference.weights import load_weights, resolve_weights
from napari_niiv.training.evaluate import evaluate, niiv_method

ALPHA = 8.0
PATHS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16 + compiled": ("bf16", True)}


def decoder_gflops(model: torch.nn.Module, precision: str, seconds: float = 2.0) -> float:
    """Sustained GFLOP/s of the decoder MLP on one engine chunk of points."""
    eng = InferenceEngine(model, InferenceSettings(device="cpu", precision=precision, alpha=8.0))
    mlp = model.decoder
    x = torch.rand(CHUNK_POINTS, mlp.net[0].in_features)
    v = torch.rand(CHUNK_POINTS)
    flops = sum(2 * CHUNK_POINTS * m.in_features * m.out_features for m in mlp.net if isinstance(m, torch.nn.Linear))
    with torch.inference_mode(), eng.autocast():
        mlp(x, v)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            mlp(x, v)
            n += 1
    return flops * n / (time.perf_counter() - t0) / 1e9


def screen_view(iso: np.ndarray, width: int = 1920, height: int = 1080) -> tuple[np.ndarray, ViewGrid]:
    """An alpha-8 volume wide enough for a 1920x1080 xz view at screen resolution (mirrored FIB-SEM),
    and that view's grid: one output pixel per isotropic voxel."""
    planes = int(np.ceil(height / ALPHA)) + 1
    zi = np.arange(planes * int(ALPHA)) % (2 * iso.shape[0])
    zi = np.where(zi < iso.shape[0], zi, 2 * iso.shape[0] - 1 - zi)
    xi = np.arange(width) % (2 * iso.shape[2])
    xi = np.where(xi < iso.shape[2], xi, 2 * iso.shape[2] - 1 - xi)
    vol = pool_axis(iso[zi][:, :64][:, :, xi].astype(np.float32), ALPHA, 0).astype(np.uint8)
    coords = ((np.arange(height) + 0.5) / ALPHA, np.array([32.5]), np.arange(width) + 0.5)
    grid = ViewGrid(coords, 1, 1.0, (0.0, 32.0, 0.0), (1.0, 1.0, 1.0))  # type: ignore[arg-type]
    return vol, grid


def first_frames(model: torch.nn.Module, precision: str, compiled: bool, iso: np.ndarray) -> dict[str, float]:
    vol, grid = screen_view(iso)
    rec = Reconstructor(model, InferenceSettings(precision=precision, compiled=compiled, alpha=ALPHA, device="cpu"))
    renderer = ViewRenderer(vol, fit_normalisation(vol), rec)
    t0 = time.perf_counter()
    renderer.preview(grid)
    t_preview = time.perf_counter() - t0
    stamps: dict[str, float] = {}
    t0 = time.perf_counter()
    renderer.render(grid, coarse=lambda image: stamps.setdefault("coarse", time.perf_counter() - t0))
    return {
        "preview_s": t_preview,
        "first_progressive_frame_s": stamps["coarse"],
        "full_frame_s": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=report_path, default="out/bench/inference.json")
    args = parser.parse_args()
    source = data_file("fibsem", "medulla_b.tif")
    model = load_weights(resolve_weights("niiv-v2-fibsem-a8")).model
    held_out = np.asarray(open_volume(source).data[122:250])
    cubes = [held_out[:, :128, :128], held_out[:, 122:250, 122:250]]
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak: fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s", flush=True)
    report: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "matmul_peak_gflops": {k: round(v) for k, v in peaks.items()},
        "paths": {},
    }
    mp_per_volume = 128**3 / 1e6
    for name, (precision, compiled) in PATHS.items():
        method = niiv_method(
            model,
            InferenceSettings(alpha=ALPHA, orientation="xz", device="cpu", precision=precision, compiled=compiled),
        )
        t0 = time.perf_counter()
        method(pool_axis(cubes[0].astype(np.float32) / 255, ALPHA, 0), ALPHA, (128, 128, 128))  # warm-up / compile
        first = time.perf_counter() - t0
        scores = evaluate(cubes, ALPHA, {name: method})[0]
        gflops = decoder_gflops(model, precision)
        dtype = "bf16" if precision == "bf16" else "fp32"
        row = {
            "s_per_128cube": round(scores.seconds_per_volume, 2),
            "ms_per_MP": round(1000 * scores.seconds_per_volume / mp_per_volume),
            "cf_psnr": round(scores.cf_psnr, 4),
            "psnr": round(scores.psnr, 4),
            "ssim": round(scores.ssim, 4),
            "compile_s": round(first - scores.seconds_per_volume, 1) if compiled else 0.0,
            "decoder_gflops": round(gflops),
            "decoder_fraction_of_peak": round(gflops / peaks[dtype], 2),
        }
        row |= {k: round(v, 2) for k, v in first_frames(model, precision, compiled, held_out).items()}
        report["paths"][name] = row
        print(name, json.dumps(row), flush=True)
    base = report["paths"]["fp32"]
    for row in report["paths"].values():
        row["speedup_vs_fp32"] = round(base["s_per_128cube"] / row["s_per_128cube"], 2)
        row["cf_psnr_minus_fp32_db"] = round(row["cf_psnr"] - base["cf_psnr"], 4)
    report["paper_rtx3090ti_s_per_128cube"] = 0.225
    print(json.dumps(report, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    run(main)
