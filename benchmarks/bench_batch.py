"""Batch reconstruction on dask: throughput against one process, and peak memory as the volume grows.

Builds anisotropic volumes lazily from real FIB-SEM (medulla_a, 250^3, mirrored to size and averaged
over 8 planes along z, i.e. alpha 8) and writes them as zarr, then runs the real command line,
``niiv reconstruct IN OUT.ome.zarr``, in a subprocess for each case:

- the local threaded scheduler with one chunk at a time (the single-process baseline), two chunks at
  once, and a dask.distributed LocalCluster of two worker processes;
- on two volume sizes, 512x512x128 and 1024x1024x128, to show that peak memory (resident memory of
  the whole process tree: client, scheduler and workers, sampled every 20 ms) stays flat while the
  volume grows fourfold.

Reported: output voxels per second (the run's own timing, after start-up), the ratio to the
single-process run, start-up seconds, and peak memory. The output scale defaults to 8 (a 128^3
output for the 1024^2 x 128 input: every input voxel still goes through the encoder, which
dominates at this scale) so that the benchmark takes about 20 minutes on a 2-core CPU;
``--scale 1`` gives the full 1024^3 output on a GPU or a cluster.
Run: ``python benchmarks/bench_batch.py [--quick]``; writes ``out/bench/batch.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import psutil

from _common import data_file, positive, report_path, run
from napari_niiv.data import open_volume

ALPHA = 8


def mirrored(n_out: int, n_in: int) -> np.ndarray:
    """Indices 0..n_out-1 folded back and forth over 0..n_in-1 (no seams, no repeats at the fold)."""
    i = np.arange(n_out) % (2 * n_in)
    return np.where(i < n_in, i, 2 * n_in - 1 - i)


def anisotropic_volume(shape: tuple[int, int, int], path: Path) -> Path:
    """Real FIB-SEM mirrored to ``shape * (8, 1, 1)`` and averaged over 8 planes along z, as a zarr."""
    iso = np.asarray(open_volume(data_file("fibsem", "medulla_a.tif")).data)
    z, y, x = shape
    zi, yi, xi = mirrored(z * ALPHA, iso.shape[0]), mirrored(y, iso.shape[1]), mirrored(x, iso.shape[2])

    def plane_block(block_info=None) -> np.ndarray:
        (z0, z1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        planes = iso[zi[z0 * ALPHA : z1 * ALPHA]][:, yi[y0:y1]][:, :, xi[x0:x1]].astype(np.float32)
        return np.rint(planes.reshape(z1 - z0, ALPHA, y1 - y0, x1 - x0).mean(axis=1)).astype(np.uint8)

    lazy = da.map_blocks(plane_block, dtype=np.uint8, chunks=da.core.normalize_chunks((16, 256, 256), shape))
    import zarr

    arr = zarr.open_array(str(path), mode="w", shape=shape, chunks=(16, 256, 256), dtype=np.uint8)
    da.store(lazy, arr)
    return path


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_case(src: Path, out: Path, scale: float, chunks: str, extra: list[str]) -> dict[str, float]:
    cmd = [sys.executable, "-m", "napari_niiv.cli", "reconstruct", str(src), str(out), "--alpha", str(ALPHA)]
    cmd += ["--scale", str(scale), "--orientation", "xz", "--chunks", chunks, "--device", "cpu", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(ps))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err = proc.communicate()[1]
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
    seconds = float(re.search(r"in ([0-9.]+) s\n", err).group(1))
    shape = tuple(int(v) for v in re.search(r"-> \((\d+), (\d+), (\d+)\)", err).groups())
    voxels = int(np.prod(shape))
    shutil.rmtree(out)
    return {
        "output_shape": shape,
        "seconds": round(seconds, 2),
        "startup_s": round(wall - seconds, 2),
        "voxels_per_s": round(voxels / seconds),
        "peak_rss_mib": round(peak / 2**20),
    }


def chunks_arg(text: str) -> str:
    """--chunks: three whole numbers above 0, checked before the volumes are written."""
    if not re.fullmatch(r"[1-9][0-9]*,[1-9][0-9]*,[1-9][0-9]*", text):
        raise argparse.ArgumentTypeError(f"{text!r}: give three whole numbers z,y,x (e.g. 128,32,32)")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=positive(float), default=8.0, help="output scale (default 8: a 128^3 output)")
    parser.add_argument(
        "--chunks", type=chunks_arg, default="128,32,32", help="output chunks z,y,x (default 128,32,32)"
    )
    parser.add_argument("--quick", action="store_true", help="small volumes, to check that the benchmark runs")
    parser.add_argument("--out", type=report_path, default="out/bench/batch.json")
    args = parser.parse_args()
    data_file("fibsem", "medulla_a.tif")
    sizes = [(32, 256, 256), (32, 512, 512)] if args.quick else [(128, 512, 512), (128, 1024, 1024)]
    runners = {
        "single process (1 thread)": ["--threads", "1"],
        "threaded scheduler, 2 threads": ["--threads", "2"],
        "LocalCluster, 2 worker processes": ["--workers", "2"],
    }
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="niiv-bench-") as tmp:
        for size in sizes:
            src = anisotropic_volume(size, Path(tmp) / f"aniso_{size[2]}.zarr")
            label = "x".join(map(str, size[::-1]))
            cases = runners if size == sizes[0] else {k: v for k, v in runners.items() if "2 threads" not in k}
            for name, extra in cases.items():
                res = run_case(src, Path(tmp) / "out.ome.zarr", args.scale, args.chunks, extra)
                results[f"{label}, {name}"] = res
                print(f"{label:>14}  {name:34} {json.dumps(res)}", flush=True)
    for size in sizes:
        label = "x".join(map(str, size[::-1]))
        base = results[f"{label}, single process (1 thread)"]["voxels_per_s"]
        for key, res in results.items():
            if key.startswith(label):
                res["throughput_vs_single_process"] = round(res["voxels_per_s"] / base, 2)
    small, large = ("x".join(map(str, s[::-1])) for s in sizes)
    growth = {
        name: round(results[f"{large}, {name}"]["peak_rss_mib"] / results[f"{small}, {name}"]["peak_rss_mib"], 2)
        for name in runners
        if f"{large}, {name}" in results
    }
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "alpha": ALPHA,
        "scale": args.scale,
        "chunks": args.chunks,
        "results": results,
        "peak_memory_large_over_small": growth,
        "input_voxels_large_over_small": round(np.prod(sizes[1]) / np.prod(sizes[0]), 2),
    }
    print(json.dumps(report, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    run(main)
