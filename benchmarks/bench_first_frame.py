"""Where the live view's first frame goes: its encoding and its decoding, each against its limit.

The first frame of ``bench_interactive.py`` (niiv-fast's full-resolution image of the 1920x1080 xz
view of pooled ``medulla_a``, cold latent cache) is timed whole and split into the engine's two
phases: ``InferenceEngine.encode`` (the xz slice's latents) and ``InferenceEngine.render`` (the
separable decoding of every output point). Each phase's limit is its arithmetic (the model's FLOPs
for the pixels encoded and the points decoded, as in ``bench_interactive``) over the 4096^2 matmul
peak measured in this run, at the engine's precision; and, for the decoder, whose runs of rows go
one per core on one torch thread each, over twice the one-thread peak too. Medians of ``--repeats``
renders in one process.

Run: ``python benchmarks/bench_first_frame.py [--repeats 9] [--weights niiv-fast]``.
"""

from __future__ import annotations

import napari_niiv  # noqa: F401  first, as in the plugin and the CLI: it sets torch's OpenMP wait policy

# isort: split
import argparse
import statistics
import time
from collections.abc import Callable

import torch

from _common import data_file, positive, run
from bench_interactive import ALPHA, engine_dtype, live_volume, matmul_peak, view_work, xz_grid
from napari_niiv.data.normalise import fit_normalisation
from napari_niiv.inference.engine import InferenceEngine
from napari_niiv.inference.reconstructor import Reconstructor
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.inference.views import ViewRenderer
from napari_niiv.inference.weights import FAST_WEIGHTS, load_weights, resolve_weights
from napari_niiv.model.flops import model_flops

HEIGHT, WIDTH = 1080, 1920


def timed_phases(names: tuple[str, ...]) -> tuple[dict[str, float], Callable[[], None]]:
    """Wrap the engine's methods ``names`` to add their seconds into a dict; returns it and an undo."""
    spent = dict.fromkeys(names, 0.0)
    originals = {name: getattr(InferenceEngine, name) for name in names}

    def wrapped(name: str, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0

        return run

    for name, fn in originals.items():
        setattr(InferenceEngine, name, wrapped(name, fn))

    def undo() -> None:
        for name, fn in originals.items():
            setattr(InferenceEngine, name, fn)

    return spent, undo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=positive(int), default=9)
    p.add_argument("--weights", default=FAST_WEIGHTS)
    args = p.parse_args()
    data_file("fibsem", "medulla_a.tif")

    model = load_weights(resolve_weights(args.weights)).model
    settings = InferenceSettings(alpha=ALPHA, device="cpu").resolved()
    rec = Reconstructor(model, settings)
    vol = live_volume(HEIGHT, WIDTH)
    norm = fit_normalisation(vol)
    grid = xz_grid(HEIGHT, WIDTH, 32.0)
    pixels, points = view_work(grid, vol.shape, rec)
    flops = model_flops(model)
    dtype = engine_dtype(settings)

    ViewRenderer(vol, norm, rec).render(grid)  # warm-up: weights cast, kernels chosen
    spent, undo = timed_phases(("encode", "render"))
    totals, encodes, decodes = [], [], []
    try:
        for _ in range(args.repeats):
            before = dict(spent)
            t0 = time.perf_counter()
            ViewRenderer(vol, norm, rec).render(grid)  # cold latent cache each time
            totals.append(time.perf_counter() - t0)
            encodes.append(spent["encode"] - before["encode"])
            decodes.append(spent["render"] - before["render"])
    finally:
        undo()
    peak = matmul_peak(dtype) * 1e9
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one_thread = matmul_peak(dtype) * 1e9
    torch.set_num_threads(threads)

    enc_limit = pixels * flops["encoder_per_pixel"] / peak
    dec_limit = points * flops["decoder_per_point"] / peak
    total, enc, dec = (statistics.median(v) for v in (totals, encodes, decodes))
    view = f"{HEIGHT}x{WIDTH} xz view at alpha {ALPHA:g}"
    print(f"{args.weights}, {view}, {settings.precision}, medians of {args.repeats}")
    print(f"matmul peak {peak / 1e9:.0f} GFLOP/s ({threads} threads), {one_thread / 1e9:.0f} on one thread")
    print(f"{'phase':<10}{'seconds':>9}{'limit s':>9}{'ratio':>7}  arithmetic")
    print(f"{'encode':<10}{enc:>9.3f}{enc_limit:>9.3f}{enc / enc_limit:>7.2f}  {pixels:,} input pixels")
    print(f"{'decode':<10}{dec:>9.3f}{dec_limit:>9.3f}{dec / dec_limit:>7.2f}  {points:,} points")
    other = statistics.median(t - e - d for t, e, d in zip(totals, encodes, decodes, strict=True))
    print(f"{'other':<10}{other:>9.3f}  (the rest of each render)")
    print(f"{'total':<10}{total:>9.3f}{enc_limit + dec_limit:>9.3f}{total / (enc_limit + dec_limit):>7.2f}")
    per_core = points * flops["decoder_per_point"] / (2 * one_thread)
    print(f"decode against twice the one-thread peak (its runs go one per core): {dec / per_core:.2f}")


if __name__ == "__main__":
    run(main)
