"""The main job: napari with a real anisotropic sample, the niiv widget and a live reconstruction.

Headless (run under Xvfb by scripts/main.sh), it saves screenshots to out/main/ (or ``--out``;
``--out docs/images`` refreshes the user guide's pictures):

1. ``napari_live_niiv.png``: the whole window: the FIB-SEM sample (z pooled by 8, alpha 8) in an
   xz view, the niiv dock widget, and the live niiv layer over the visible region.
2. ``xz_input_niiv_truth.png``: the same view, canvas only: what napari shows of the anisotropic
   input | the live niiv view | the isotropic ground truth the input was pooled from.
3. ``napari_isotropic_layer.png``: Layers > Transform > niiv > Reconstruct isotropic, the lazy
   whole-volume layer, once the tiles on screen are computed.
4. ``epfl_xz_niiv.png``: real anisotropic EM (EPFL hippocampus sample, alpha 8) in the live view.
5. ``napari_fine_tuning.png``: a short fine-tuning run on that volume from the widget (loss curve,
   held-out check, live preview); its weights go to ``out/user-weights``, not your own folder.
6. ``napari_dock.png``: the niiv dock alone after that run: the "?" help button, the inline progress
   bar, the fine-tuning panel and its loss plot (axes, raw and mean loss, held-out gains).
7. ``napari_save_progress.png``: Save isotropic volume... running in the background: the dock's
   inline bar with ETA and Cancel, and the same save in napari's activity dock; the save is then
   cancelled (its ``.partial`` store would resume) and removed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def wait(viewer, condition, timeout: float = 300.0) -> None:
    """Let Qt run until ``condition()`` holds."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the viewer did not finish in time")
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let the last layer update draw
        QApplication.processEvents()
        time.sleep(0.01)


def live_done(widget) -> bool:
    lv = widget.live_view
    return lv is not None and not lv.busy and bool(lv.timings) and "niiv" in lv.timings[-1]


def save(image: np.ndarray, path: Path) -> None:
    Image.fromarray(np.asarray(image)[..., :3]).save(path)
    print(f"saved {path}")


def open_demo(argv: list[str] | None, description: str, title: str, size: tuple[int, int]):
    """The demo scripts' start: ``--out``, the demo's own user-weights folder, a napari window of
    ``size`` with the FIB-SEM sample (isotropic truth and its pooled input) and the niiv dock on
    the input. Returns (args, viewer, truth, pooled, widget)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "main")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["NIIV_WEIGHTS_DIR"] = str(ROOT / "out" / "user-weights")  # the demo's, not yours

    import napari

    viewer = napari.Viewer(show=True, title=title)
    viewer.window._qt_window.resize(*size)
    wait(viewer, lambda: True)  # let the window take its size before fitting the view
    truth, pooled = viewer.open_sample("napari-niiv", "fibsem_anisotropic")
    _, widget = viewer.window.add_plugin_dock_widget("napari-niiv", "niiv isotropic view")
    widget.volume_choice.value = pooled
    return args, viewer, truth, pooled, widget


def main(argv: list[str] | None = None) -> int:
    args, viewer, truth, pooled, widget = open_demo(argv, __doc__.splitlines()[0], "napari-niiv main job", (1500, 900))
    print(f"sample: {pooled.name} {pooled.data.shape}, scale {tuple(pooled.scale)}; alpha {widget.alpha_spin.value}")

    # An xz view (z down, x across) of plane y = 125, two screen pixels per isotropic voxel.
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, 1250.0)
    viewer.reset_view()
    viewer.scene.camera.zoom = 0.2
    t0 = time.perf_counter()
    widget.live_check.value = True
    wait(viewer, lambda: live_done(widget))
    timing = widget.live_view.timings[-1]
    out = widget.live_view.output
    print(
        f"live xz view: {out.data.shape[0]}x{out.data.shape[2]} px, preview {timing['preview'] * 1000:.0f} ms, "
        f"niiv {timing['niiv']:.1f} s (window shown to niiv: {time.perf_counter() - t0:.1f} s)"
    )
    save(viewer.screenshot(canvas_only=False, flash=False), args.out / "napari_live_niiv.png")

    # Input | niiv | ground truth, same camera.
    panels = []
    for shown in (pooled, out, truth):
        for layer in (pooled, out, truth):
            layer.visible = layer is shown
        wait(viewer, lambda: True)
        panels.append(viewer.screenshot(canvas_only=True, flash=False)[..., :3])
    gap = np.full((panels[0].shape[0], 12, 3), 255, np.uint8)
    save(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1), args.out / "xz_input_niiv_truth.png")
    for layer in (pooled, out):
        layer.visible = True
    truth.visible = False

    # The whole volume as a lazy layer, from the Layers menu command.
    widget.live_check.value = False
    viewer.layers.remove(out)
    viewer.layers.selection.active = pooled
    from napari._app_model import get_app_model  # napari's command registry: what the menu item runs

    get_app_model().commands.execute_command("napari-niiv.reconstruct_isotropic").result()
    iso = viewer.layers[-1]
    lazy = iso.data[0].volume
    wait(viewer, lambda: lazy.pending == 0 and len(lazy._tiles) > 0)
    iso.refresh()
    wait(viewer, lambda: True)
    print(f"lazy isotropic layer: {iso.name} {iso.data[0].shape}, {len(lazy._tiles)} tiles computed on demand")
    save(viewer.screenshot(canvas_only=False, flash=False), args.out / "napari_isotropic_layer.png")

    # Real anisotropic EM at its own alpha.
    viewer.layers.clear()
    (em,) = viewer.open_sample("napari-niiv", "epfl_hippocampus")
    widget.volume_choice.value = em
    widget.sections_choice.value = "thin"  # every 8th plane kept: thin sections, which niiv-em is told
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, float(em.scale[1] * em.data.shape[1] / 2))
    viewer.reset_view()
    widget.live_check.value = True
    wait(viewer, lambda: live_done(widget))
    save(viewer.screenshot(canvas_only=False, flash=False), args.out / "epfl_xz_niiv.png")

    # Fine-tune the shipped weights on this volume at its own alpha: 60 steps, with the live preview.
    shutil.rmtree(os.environ["NIIV_WEIGHTS_DIR"], ignore_errors=True)
    panel = widget.training
    panel.steps_spin.value = 60
    panel.minutes_spin.value = 0
    panel.start_button.native.click()
    wait(viewer, lambda: panel.job is None and len(panel.plot.losses) >= 60, timeout=600)
    wait(viewer, lambda: live_done(widget))
    print(f"fine-tuning: {panel.status_label.value}")
    save(viewer.screenshot(canvas_only=False, flash=False), args.out / "napari_fine_tuning.png")
    widget.live_check.value = False
    wait(viewer, lambda: widget.activity_bar.current is None, timeout=60)
    widget.grab().save(str(args.out / "napari_dock.png"))
    print(f"saved {args.out / 'napari_dock.png'}")

    # Save isotropic volume... in the background (256^3 voxels here), shown once ETA is known.
    target = ROOT / "out" / "main-save" / f"{em.name}-isotropic.ome.zarr"
    shutil.rmtree(target.parent, ignore_errors=True)
    target.parent.mkdir(parents=True)
    saver = widget.save_to(target)
    assert saver is not None, widget.status_label.value
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for note in viewer.window._qt_window.findChildren(NapariQtNotification):
        note.close()  # earlier info pop-ups would cover the activity dock
    activity = viewer.window._qt_window._activity_dialog  # napari's activity dock (bottom right)
    activity.show()
    activity.move_to_bottom_right()
    t0 = time.perf_counter()
    # the sample is one column of chunks: the bar moves with its planes, the ETA follows the first
    wait(viewer, lambda: saver.job.progress().done > saver.job.progress().first, timeout=600)
    # under load the dock's bar may show other work for a while before the save's ETA
    wait(viewer, lambda: re.search(r"ETA \d", widget.activity_bar.label.text()) is not None, timeout=120)
    print(f"background save: {widget.activity_bar.label.text()} ({time.perf_counter() - t0:.0f} s in)")
    save(viewer.screenshot(canvas_only=False, flash=False), args.out / "napari_save_progress.png")
    widget.cancel_save()
    wait(viewer, lambda: widget.saver is None, timeout=600)
    print(f"cancelled: {widget.status_label.value}")
    shutil.rmtree(target.parent, ignore_errors=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
