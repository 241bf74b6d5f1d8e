"""The user guide's confidence-map pictures, made headless (run under Xvfb, like scripts/main_job.py):

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/confidence_pictures.py --out docs/images

1. ``napari_confidence.png``: the whole window: the FIB-SEM sample (z pooled by 8) in an xz view, the
   dock with "confidence map" ticked, the live niiv layer and its confidence map over it.
2. ``confidence_vs_error.png``: one xz plane of the held-out part of that sample (medulla_b z 122-248,
   never used in training): niiv | the confidence map | niiv's real error against the isotropic
   ground truth, each from the product's own code (:mod:`napari_niiv.inference.confidence`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from main_job import live_done, open_demo, save, wait  # noqa: E402  (the main job's helpers)

PLANE_Y = 125  # the xz plane shown
HELD_OUT_Z = 122  # medulla_b planes from here on were never trained on


def confidence_done(widget) -> bool:
    lv = widget.live_view
    return live_done(widget) and "confidence" in lv.timings[-1]


def coloured(values: np.ndarray, high: float, colormap: str) -> np.ndarray:
    from napari.utils.colormaps import ensure_colormap

    rgba = ensure_colormap(colormap).map(np.clip(values / high, 0, 1).ravel())
    return (rgba[:, :3].reshape(*values.shape, 3) * 255).astype(np.uint8)


def panel(rgb: np.ndarray, title: str, zoom: int = 2) -> np.ndarray:
    big = np.repeat(np.repeat(rgb, zoom, 0), zoom, 1)
    img = Image.new("RGB", (big.shape[1], big.shape[0] + 22), "white")
    img.paste(Image.fromarray(big), (0, 22))
    ImageDraw.Draw(img).text((4, 5), title, fill="black")
    return np.asarray(img)


def comparison(truth: np.ndarray, pooled: np.ndarray, model, out: Path) -> None:
    """niiv | map | real error on plane PLANE_Y, z from HELD_OUT_Z, computed as `niiv reconstruct
    --confidence` computes them (the dock's settings: alpha 8, xz slices)."""
    from napari_niiv.data.normalise import fit_normalisation
    from napari_niiv.inference import confidence
    from napari_niiv.inference.geometry import output_geometry
    from napari_niiv.inference.reconstructor import NormalisedView, Reconstructor
    from napari_niiv.inference.settings import InferenceSettings

    norm = fit_normalisation(pooled)
    rec = Reconstructor(model, InferenceSettings(alpha=8.0))
    shape = output_geometry(pooled.shape, 8.0).shape
    index = (slice(HELD_OUT_Z, shape[0]), slice(PLANE_Y, PLANE_Y + 1), slice(0, shape[2]))
    image, umap = rec.block_confidence(NormalisedView(pooled, norm), shape, index)
    niiv = norm.invert(image, np.float32)[:, 0]
    umap = confidence.to_intensity(umap, norm)[:, 0]
    error = np.abs(niiv - truth[index][:, 0].astype(np.float32))
    ratio = confidence.top_fraction_ratio(umap, error)
    grey = np.clip((niiv - norm.low) / (norm.high - norm.low), 0, 1)
    panels = [
        panel(np.repeat((grey[..., None] * 255).astype(np.uint8), 3, 2), "niiv (xz, alpha 8)"),
        panel(coloured(umap, float(np.percentile(umap, 99.5)), confidence.COLORMAP), "confidence map |xz - yz|"),
        panel(coloured(error, float(np.percentile(error, 99.5)), confidence.COLORMAP), "real error |niiv - truth|"),
    ]
    gap = np.full((panels[0].shape[0], 12, 3), 255, np.uint8)
    save(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1), out)
    print(f"plane y={PLANE_Y}, z {HELD_OUT_Z}-{shape[0]}: top-10 % error ratio of the map {ratio:.2f}")


def main(argv: list[str] | None = None) -> int:
    args, viewer, truth, pooled, widget = open_demo(
        argv, __doc__.splitlines()[0], "napari-niiv confidence map", (1900, 1000)
    )
    viewer.dims.order = (1, 0, 2)  # an xz view of plane y = PLANE_Y
    viewer.dims.set_point(1, 10.0 * PLANE_Y)
    viewer.reset_view()
    viewer.scene.camera.zoom = 0.2
    truth_data = np.asarray(truth.data)
    viewer.layers.remove(truth)  # the picture shows what a user has: the input
    widget.live_check.value = True
    wait(viewer, lambda: live_done(widget))
    widget.confidence_check.value = True
    wait(viewer, lambda: confidence_done(widget))
    t = widget.live_view.timings[-1]
    print(f"live view: niiv {t['niiv']:.1f} s, its confidence map {t['confidence']:.1f} s after the request")
    # Grid mode: input | niiv live | its confidence map side by side (the map is additive over niiv
    # otherwise); the map layer selected, so its controls show.
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (1, 3)
    viewer.layers.selection.active = widget.live_view.confidence_output
    viewer.reset_view()
    viewer.scene.camera.zoom *= 1.1
    wait(viewer, lambda: confidence_done(widget))
    save(viewer.screenshot(canvas_only=False, flash=False), args.out / "napari_confidence.png")

    model = widget.weights().model
    comparison(truth_data, np.asarray(pooled.data), model, args.out / "confidence_vs_error.png")
    widget.live_check.value = False
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
