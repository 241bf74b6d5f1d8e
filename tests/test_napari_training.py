"""Fine-tuning inside the real napari viewer: progress, loss curve, preview, stop, resume, save."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from napari_niiv._napari.activity import CancelableBar
from napari_niiv.data import open_volume
from napari_niiv.inference.reconstructor import reconstruct_volume
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.inference.weights import DEFAULT_WEIGHTS, load_weights, read_metadata, shipped_dir
from napari_niiv.training.finetune import fine_tune_job
from tests.conftest import data_path

pytest.importorskip("napari")
pytestmark = pytest.mark.slow  # a napari viewer each


@pytest.fixture
def user_weights(tmp_path, monkeypatch):
    folder = tmp_path / "user-weights"
    monkeypatch.setenv("NIIV_WEIGHTS_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def cremi() -> np.ndarray:
    """Real serial-section TEM, alpha 10: (32, 96, 96) uint8."""
    return np.asarray(open_volume(data_path("anisotropic_em", "cremi_a.tif")).data[:, :96, :96])


def open_panel(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-niiv", "niiv isotropic view")
    return widget, widget.training


def test_fine_tune_stop_resume_save_and_use(qtbot, make_napari_viewer, cremi, user_weights):
    viewer = make_napari_viewer()
    layer = viewer.add_image(cremi, name="cremi", scale=(40, 4, 4))
    widget, panel = open_panel(viewer)
    assert widget.alpha_spin.value == 10.0 and panel.name_edit.value == "cremi-a10"
    viewer.dims.order = (1, 0, 2)
    widget.live_check.value = True  # the preview shows in the live view
    panel.steps_spin.value = 40
    panel.minutes_spin.value = 0
    panel.name_edit.value = "cremi-test"
    panel.start_button.native.click()
    assert panel.job is not None, panel.status_label.value
    assert panel.bar is not None and not panel.start_button.enabled and panel.stop_button.enabled

    qtbot.waitUntil(lambda: len(panel.plot.losses) >= 12, timeout=120_000)
    assert panel.plot.steps == list(range(1, len(panel.plot.steps) + 1))
    qtbot.waitUntil(lambda: panel.bar.n >= 12, timeout=5_000)  # the bar moves at most every BAR_EVERY_S
    panel.stop_button.native.click()
    qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)
    stopped_at = panel.plot.steps[-1]
    assert 12 <= stopped_at < 40 and "stopped at step" in panel.status_label.value
    out = user_weights / "cremi-test.safetensors"
    assert out.exists() and (user_weights / "cremi-test.ckpt.safetensors").exists()
    assert panel.resume_button.enabled
    assert panel.plot.checks[0][0] == 0, "the start weights were not scored on the held-out planes"
    assert len(panel.plot.checks) >= 2, "no held-out check during training"
    assert panel.previews >= 1, "the live view never showed in-training weights"

    panel.resume_button.native.click()
    qtbot.waitUntil(lambda: panel.job is None, timeout=180_000)
    assert "done at step 40" in panel.status_label.value, panel.status_label.value
    assert re.search(r"held-out [+-][\d.]+ dB vs bilinear, [+-][\d.]+ dB vs bicubic$", panel.status_label.value)
    assert panel.plot.steps[-1] == 40 and len(panel.plot.losses) == 40  # one curve, continued

    # saved with a model card, listed and selected at once, never beside the shipped weights
    assert "user/cremi-test" in widget.weights_choice.choices
    assert widget.weights_choice.value == "user/cremi-test"
    assert not (shipped_dir() / "cremi-test.safetensors").exists()
    card = json.loads(read_metadata(out)["card"])
    assert card["source_layer"] == "cremi" and card["alpha"] == 10.0 and card["steps"] == 40
    assert card["held_out"]["cf_psnr_gain"] == pytest.approx(card["held_out"]["cf_psnr_gain"])
    assert card["regions"] == [[[0, 32], [0, 96], [0, 96]]] and card["held_out_planes"] == [26, 32]
    assert card["settings"]["lr"] == 1e-4 and card["settings"]["steps"] == 40
    assert "held-out xy planes" in (user_weights / "cremi-test.md").read_text()

    # the new weights reconstruct, in the live view (selecting them restarted it) and in the core
    qtbot.waitUntil(lambda: widget.live_view is not None and not widget.live_view.busy, timeout=60_000)
    qtbot.waitUntil(lambda: widget.live_view.timings and "niiv" in widget.live_view.timings[-1], timeout=60_000)
    assert sum(x.name.endswith("niiv live") for x in viewer.layers) == 1  # new weights, same live layer
    result = reconstruct_volume(load_weights(out).model, cremi[:, :40, :40], InferenceSettings(alpha=10))
    assert result.shape == (320, 40, 40) and np.isfinite(result).all()

    # a second Start under the same name refuses instead of overwriting
    panel.start_button.native.click()
    assert panel.job is None and "already exist" in panel.status_label.value
    widget.live_check.value = False
    assert layer in viewer.layers


def test_the_preview_goes_only_to_a_live_view_of_the_start_weights(qtbot, make_napari_viewer, cremi, user_weights):
    """Picking other weights during a run shows them as they are: the run's in-training weights
    were pushed into the live view anyway, under the other name (or failed to load into another
    architecture)."""
    viewer = make_napari_viewer()
    viewer.add_image(cremi, name="cremi", scale=(40, 4, 4))
    widget, panel = open_panel(viewer)
    viewer.dims.order = (1, 0, 2)
    widget.live_check.value = True
    panel.steps_spin.value = 2000
    panel.minutes_spin.value = 0
    panel.start_button.native.click()
    assert panel.job is not None, panel.status_label.value
    state = {k: v.clone() for k, v in load_weights(panel.job.init).model.state_dict().items()}
    panel._on_preview(1, state)
    assert panel.previews == 1
    others = [w for w in widget.weights_choice.choices if w != widget.weights_choice.value]
    widget.weights_choice.value = others[0]
    qtbot.waitUntil(lambda: widget.live_view is not None and not widget.live_view.busy, timeout=60_000)
    panel._on_preview(2, state)
    assert panel.previews == 1 and "failed" not in widget.status_label.value
    panel.stop_button.native.click()
    qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)
    widget.live_check.value = False


def test_a_refusal_found_on_the_training_thread_reads_as_one(qtbot, make_napari_viewer, cremi, user_weights):
    """What the training thread refuses (here: blank held-out planes; also a resume of another
    run) is said as what to do, not as 'training failed' with a traceback, and no card is written."""
    blank = cremi.copy()
    blank[26:] = 0
    viewer = make_napari_viewer()
    viewer.add_image(blank, name="cremi", scale=(40, 4, 4))
    _, panel = open_panel(viewer)
    panel.start_button.native.click()
    assert panel.job is not None and "scoring the start weights" in panel.status_label.value
    qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)
    assert panel.status_label.value == (
        "the part held out to check the run (planes z 26-31) is constant: there is nothing to score on it"
    )
    assert not user_weights.exists() or not any(user_weights.iterdir())


def test_fast_steps_move_the_activity_bar_a_few_times_and_to_the_last_step(make_napari_viewer, cremi, user_weights):
    """napari's bar runs Qt's event loop on each update: 200 steps in a blink move it a few times,
    not 200, and the last step always shows."""
    viewer = make_napari_viewer()
    viewer.add_image(cremi, name="cremi", scale=(40, 4, 4))
    _, panel = open_panel(viewer)
    panel.bar = CancelableBar(total=200)
    moves = []
    panel.bar.events.value.connect(lambda e: moves.append(e.value))
    try:
        for step in range(1, 201):
            panel._on_step(step, 0.1)
        assert len(panel.plot.losses) == 200  # the loss plot takes every step
        assert panel.bar.n == 200 and moves[-1] == 200
        assert 2 <= len(moves) <= 20, moves
    finally:
        panel.bar.close()
        panel.bar = None


def test_picked_weights_deleted_since_are_named_by_their_control(make_napari_viewer, cremi, user_weights):
    """A user weights file deleted outside the viewer was refused as 'unknown weights ...', without
    saying which control to change, as every other refusal of the panel does."""
    user_weights.mkdir(parents=True)
    mine = user_weights / "mine.safetensors"
    shutil.copy(shipped_dir() / "niiv-fast.safetensors", mine)
    viewer = make_napari_viewer()
    viewer.add_image(cremi, name="cremi", scale=(40, 4, 4))
    widget, panel = open_panel(viewer)
    (choice,) = [c for c in widget.weights_choice.choices if "mine" in str(c)]
    widget.weights_choice.value = choice
    mine.unlink()
    panel.start(resume=False)
    assert panel.job is None
    assert panel.status_label.value.startswith("weights: unknown weights"), panel.status_label.value


def test_the_panel_asks_for_what_its_widgets_show(make_napari_viewer, cremi, user_weights):
    viewer = make_napari_viewer()
    layer = viewer.add_image(cremi, name="cremi", scale=(40, 4, 4), metadata={"niiv_source": "/x/cremi_a.tif"})
    widget, panel = open_panel(viewer)
    panel.steps_spin.value, panel.minutes_spin.value, panel.lr_edit.value = 300, 2, "3e-4"
    req = panel.request()
    assert req.data is layer.data and req.scale == (40.0, 4.0, 4.0) and req.alpha == 10.0
    assert (req.name, req.source, req.start_weights) == ("cremi", "/x/cremi_a.tif", DEFAULT_WEIGHTS)
    assert (req.steps, req.minutes, req.lr, req.device, req.resume) == (300, 2.0, 3e-4, "auto", False)
    assert req.out == user_weights / "cremi-a10.safetensors"
    assert req.regions == ((slice(0, 32), slice(0, 96), slice(0, 96)),)

    # a rectangle drawn in the xy view (world coordinates) spans z and covers its voxels in y and x
    rect = [[7.0, 40.0, 80.0], [7.0, 40.0, 360.0], [7.0, 360.0, 360.0], [7.0, 360.0, 80.0]]
    boxes = viewer.add_shapes([rect], shape_type="rectangle", name="boxes")
    panel.region_choice.value = "boxes of a Shapes layer"
    panel.shapes_choice.value = boxes
    assert panel.request().regions == ((slice(0, 32), slice(10, 91), slice(20, 91)),)
    job = fine_tune_job(panel.request())
    assert job.card["regions"] == [[[0, 32], [10, 91], [20, 91]]] and job.split.held_out[1:] == (
        slice(10, 91),
        slice(20, 91),
    )
    assert job.settings.lr == 3e-4 and job.settings.steps == 300 and job.settings.time_budget == 120
    # the widget's sections (degradation) follow the weights' card and reach the run, its held-out
    # check and card, and the settings the reconstruction is told
    assert req.degradation == "thick" == job.settings.degradations
    widget.sections_choice.value = "psf"
    job = fine_tune_job(panel.request())
    assert job.settings.degradations == "psf" and str(job.held_out().degradation) == "psf"
    assert widget.settings().degradation == "psf"

    # the visible part of an xz view, and all y planes
    viewer.layers.selection.active = layer
    viewer.dims.order = (1, 0, 2)
    viewer.reset_view()
    viewer.scene.camera.zoom *= 4
    panel.region_choice.value = "visible region"
    (region,) = panel.request().regions
    assert region[1] == slice(0, 96) and 0 < region[2].start < region[2].stop < 96, region

    # what cannot be trained is said in the status line, and nothing starts
    panel.lr_edit.value = "fast"
    panel.start_button.native.click()
    assert panel.job is None and "learning rate 'fast'" in panel.status_label.value
    panel.lr_edit.value = "1e-4"
    viewer.layers.remove(boxes)
    panel.region_choice.value = "boxes of a Shapes layer"
    panel.start_button.native.click()
    assert panel.job is None and "Shapes layer" in panel.status_label.value


def test_closing_the_viewer_stops_training(qtbot, make_napari_viewer, cremi, user_weights):
    viewer = make_napari_viewer()
    viewer.add_image(cremi, name="cremi", scale=(40, 4, 4))
    _, panel = open_panel(viewer)
    panel.steps_spin.value = 5000
    panel.name_edit.value = "closing"
    panel.start_button.native.click()
    job = panel.job
    qtbot.waitUntil(lambda: len(panel.plot.losses) >= 2, timeout=60_000)
    viewer.close()
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    assert (user_weights / "closing.ckpt.safetensors").exists()  # stopped cleanly, resumable


def test_removing_the_layer_stops_training(qtbot, make_napari_viewer, cremi, user_weights):
    viewer = make_napari_viewer()
    layer = viewer.add_image(cremi, name="cremi", scale=(40, 4, 4))
    _, panel = open_panel(viewer)
    panel.steps_spin.value = 5000
    panel.name_edit.value = "removed"
    panel.start_button.native.click()
    qtbot.waitUntil(lambda: len(panel.plot.losses) >= 2, timeout=60_000)
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)
    assert "stopped at step" in panel.status_label.value
