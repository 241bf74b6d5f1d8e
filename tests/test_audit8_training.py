"""Fine-tuning defects found by driving the viewer's training panel (audit 8): the held-out check's
cost, volumes too narrow for the start weights, Resume after the settings changed or after a
complete run, default names of finished weights, names too long, boxes outside the volume and
values the loss plot cannot draw."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_niiv.data import open_volume
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.weights import DEFAULT_WEIGHTS, read_metadata
from napari_niiv.training.finetune import (
    MAX_HELD_PLANES,
    MAX_HELD_SIDE,
    check_new_weights,
    fine_tune_job,
    free_name,
    resumable,
    scored_part,
    weights_name,
)
from napari_niiv.training.train import TrainResult, checkpoint_path
from tests import test_train
from tests.conftest import data_path

cremi, user_weights, request = test_train.cremi, test_train.user_weights, test_train.request  # its fixtures


def test_the_held_out_check_scores_a_bounded_textured_part(user_weights) -> None:
    """The check scored every held-out voxel: on a 250^3 volume the start weights' score took 72 s
    before the first step and each check as long again (a 30 s run took 143 s, 8 steps). It scores
    a few planes in a window now, where the held-out planes have texture, not empty background."""
    real = np.asarray(open_volume(data_path("anisotropic_em", "cremi_a.tif")).data)  # (32, 320, 320)
    data = np.zeros((40, 400, 400), np.uint8)
    data[:32, -320:, -320:] = real  # texture in one corner only, the rest empty
    data[32:, -320:, -320:] = real[:8]
    job = fine_tune_job(request(data, user_weights / "big.safetensors"))
    assert job.split.held_out[0] == slice(32, 40) and job.split.z_ranges == [(0, 32)]
    (held,) = job.held_out().volumes  # (y, planes, x), as the check reconstructs them
    assert held.shape == (MAX_HELD_SIDE, MAX_HELD_PLANES, MAX_HELD_SIDE)
    assert held.std() > 10, "the window landed on the empty part"
    # the scored voxels are the held-out planes' own, in the textured corner
    planes, ys, xs = scored_part(data, job.split.held_out, 10.0)
    assert planes == [32, 33, 34, 35, 36, 37, 38, 39] and ys.start >= 80 and xs.start >= 80
    np.testing.assert_array_equal(np.transpose(held, (1, 0, 2)), data[planes, ys, xs])


def test_a_volume_narrower_than_the_start_weights_see_is_refused_before_the_run(cremi, user_weights) -> None:
    """A 20-34 px wide volume started, then failed on the training thread with 'the volume's xy size
    6x20 is smaller than the model's receptive field' (the held-out planes, seen sideways)."""
    narrow = cremi[:, :30, :30]
    with pytest.raises(NiivInputError, match=r"'cremi': .* 30 px wide in x, .* need at least 35"):
        fine_tune_job(request(narrow, user_weights / "n.safetensors"))
    assert fine_tune_job(request(narrow, user_weights / "n.safetensors", start_weights="niiv-fast"))


def test_a_name_too_long_for_a_file_is_refused_by_its_length() -> None:
    with pytest.raises(NiivInputError, match="300 characters long; give a name of at most 120"):
        weights_name("x" * 300)
    assert weights_name("x" * 120) == "x" * 120


@pytest.mark.slow
def test_resume_keeps_the_stopped_runs_settings_and_a_complete_run_is_not_resumable(cremi, user_weights) -> None:
    """Resume took the steps, learning rate, sections, region and weights the widgets showed: any
    change after Stop was refused as 'another run' once the held-out check had run (with CLI
    advice). After a complete run Resume stayed enabled and did nothing, and Start's refusal
    advised it; a new session's default name was the finished weights', which Start refuses."""
    out = user_weights / "cremi.safetensors"
    job = fine_tune_job(request(cremi, out, steps=12))

    def on_step(step, loss):
        if step == 2:
            job.stop()

    job.on_step = on_step
    job.start()
    assert job.join(300) and isinstance(job.result, TrainResult), job.result
    assert resumable(out) and free_name(user_weights, "cremi") == "cremi"  # the stopped run, to Resume

    changed = request(
        cremi,
        out,
        steps=50,
        lr=3e-4,
        alpha=6.0,
        degradation="psf",
        start_weights="niiv-fast",
        regions=((slice(0, 32), slice(0, 80), slice(0, 80)),),
        resume=True,
    )
    job = fine_tune_job(changed)
    assert (job.settings.steps, job.settings.lr, job.settings.alpha, job.settings.degradations) == (
        12,
        1e-4,
        10.0,
        "thick",
    )
    assert job.card["regions"] == [[[0, 32], [0, 96], [0, 96]]]
    job.start()
    assert job.join(300) and isinstance(job.result, TrainResult), job.result
    assert job.result.steps_done == 12 and not job.result.stopped_early
    card = json.loads(read_metadata(out)["card"])
    assert card["started_from"] == DEFAULT_WEIGHTS and card["architecture"] == "v1"
    assert [r["steps"] for r in card["runs"]] == [[0, 2], [2, 12]]

    assert not resumable(out)
    with pytest.raises(NiivInputError, match=r"is complete \(step 12 of 12\): nothing to resume"):
        check_new_weights(out, True)
    with pytest.raises(NiivInputError, match=r"already exist: choose another name$"):
        check_new_weights(out, False)
    assert free_name(user_weights, "cremi") == "cremi-2" and checkpoint_path(out).exists()


def test_the_loss_plot_leaves_out_values_it_cannot_draw(qtbot) -> None:
    """A NaN or infinite value made every paint raise (OverflowError in the log ticks)."""
    from napari_niiv._napari.loss_plot import LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(400, 200)
    for step, loss in enumerate([0.1, float("nan"), 0.08, float("inf")], 1):
        plot.add_loss(step, loss)
    plot.add_check(0, 2.0)
    plot.add_check(4, float("nan"), float("inf"))
    assert plot.steps == [1, 3] and plot.checks == [(0, 2.0)]
    assert not plot.grab().isNull()
    assert [row["step"] for row in plot.rows()] == [0, 1, 3]


@pytest.mark.slow
def test_the_panel_names_free_weights_resumes_with_its_run_and_says_where_boxes_are(
    qtbot, make_napari_viewer, cremi, user_weights
) -> None:
    viewer = make_napari_viewer()
    layer = viewer.add_image(cremi, name="cremi", scale=(40, 4, 4))
    user_weights.mkdir(parents=True)
    (user_weights / "cremi-a10.safetensors").write_bytes(b"finished weights of another session")
    _, widget = viewer.window.add_plugin_dock_widget("napari-niiv", "niiv isotropic view")
    panel = widget.training
    assert panel.name_edit.value == "cremi-a10-2" and not panel.resume_button.enabled

    # boxes that all lie outside the volume are named as such (it said 'no region is 64x64 px')
    far = [[7.0, 1000.0, 1000.0], [7.0, 1000.0, 2000.0], [7.0, 2000.0, 2000.0], [7.0, 2000.0, 1000.0]]
    boxes = viewer.add_shapes([far], shape_type="rectangle", name="far")
    panel.region_choice.value = "boxes of a Shapes layer"
    panel.shapes_choice.value = boxes
    panel.start_button.native.click()
    assert panel.job is None
    assert panel.status_label.value == "boxes: the shapes of 'far' all lie outside 'cremi': draw them over the volume"
    panel.region_choice.value = "whole volume"

    panel.steps_spin.value, panel.minutes_spin.value = 12, 0
    panel.start_button.native.click()
    assert panel.job is not None, panel.status_label.value
    qtbot.waitUntil(lambda: len(panel.plot.losses) >= 2, timeout=120_000)
    panel.stop_button.native.click()
    qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)
    assert panel.resume_button.enabled and panel.name_edit.value == "cremi-a10-2"

    panel.steps_spin.value, panel.lr_edit.value = 40, "3e-4"
    widget.weights_choice.value = "niiv-fast"
    panel.resume_button.native.click()
    assert panel.job is not None, panel.status_label.value
    assert (panel.steps_spin.value, panel.lr_edit.value) == (12, "0.0001")
    assert panel.status_label.value.startswith("resuming the stopped run with its settings (alpha 10")
    qtbot.waitUntil(lambda: panel.job is None, timeout=180_000)
    assert "done at step 12" in panel.status_label.value, panel.status_label.value
    assert not panel.resume_button.enabled  # complete: nothing to resume
    panel.start_button.native.click()
    assert panel.job is None and panel.status_label.value == (
        "save as: weights 'cremi-a10-2' already exist: choose another name"
    )
    assert layer in viewer.layers


def test_stop_while_the_start_weights_are_scored_trains_and_writes_nothing(cremi, user_weights) -> None:
    """Stop pressed while the start weights were scored on the held-out planes (seconds on a large
    volume) still trained one step, to save weights and a checkpoint ('stopped at step 1')."""
    out = user_weights / "early.safetensors"
    job = fine_tune_job(request(cremi, out))
    steps, results = [], []
    job.on_check = lambda step, metrics: job.stop() if step == 0 else None
    job.on_step = lambda step, loss: steps.append(step)
    job.on_finished = results.append
    job.start()
    assert job.join(300)
    assert steps == [] and len(results) == 1 and results[0] is job.result
    assert isinstance(job.result, NiivInputError) and "before the first step: nothing was written" in str(job.result)
    assert job.ended == "stopped by the user before the first step"
    assert not user_weights.exists() or sorted(p.name for p in user_weights.iterdir()) == []
