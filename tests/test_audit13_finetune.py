"""Fine-tuning in the viewer on real light microscopy (audit 13): a volume too short in y for the
held-out check, the ETA between steps, what the run gained over its start weights, and the
visible region asked for in a 3D view."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_niiv.data import open_volume
from napari_niiv.errors import NiivInputError
from napari_niiv.training.finetune import FineTuneRequest, fine_tune_job
from tests.conftest import data_path, gui_thread_waits, open_dock


@pytest.fixture(scope="module")
def nuclei() -> np.ndarray:
    """Real confocal nuclei, every 4th plane: (15, 256, 256) uint16, z 1.16 um over xy 0.26 um (alpha 4.46)."""
    return np.asarray(open_volume(data_path("lm", "cells3d_nuclei.tif")).data[::4])


def request(data: np.ndarray, out, **kw) -> FineTuneRequest:
    return FineTuneRequest(
        data=data,
        scale=(1.16, 0.26, 0.26),
        name="nuclei",
        source=None,
        alpha=1.16 / 0.26,
        start_weights="niiv-lm",
        regions=((slice(0, data.shape[0]), slice(0, data.shape[1]), slice(0, data.shape[2])),),
        out=out,
        degradation="psf",
        **kw,
    )


def test_a_volume_too_short_in_y_for_the_check_is_refused_before_the_run(nuclei, tmp_path):
    """A 12 px tall (y) volume at alpha 4.46 started, scored nothing and failed on the training
    thread with 'the part held out ... has 12 z plane(s) (shape (12, 3, 96))': the wrong axis
    named, after the run had started."""
    out = tmp_path / "short.safetensors"
    with pytest.raises(NiivInputError, match=r"is 12 px tall in y; .* needs at least 14 px: learn from a taller"):
        fine_tune_job(request(nuclei[:, :12, :96], out))
    fine_tune_job(request(nuclei[:, :14, :96], out))  # tall enough: the run is built
    assert not out.exists()


@pytest.mark.slow  # a napari viewer
def test_the_eta_counts_down_between_steps(make_napari_viewer, nuclei, monkeypatch, tmp_path):
    """At 5 s a step the ETA rose every second between steps (1:27, 1:28, 1:29) and fell at the next
    (1:13): it was the time since the first step over the steps done. Now: the steps left at the
    time per step so far, less the time since the latest step."""
    from types import SimpleNamespace

    from napari_niiv._napari import training_panel

    monkeypatch.setenv("NIIV_WEIGHTS_DIR", str(tmp_path))
    clock = [100.0]
    monkeypatch.setattr(training_panel, "time", SimpleNamespace(perf_counter=lambda: clock[0], time=lambda: clock[0]))
    viewer = make_napari_viewer()
    viewer.add_image(nuclei[:, :96, :96], name="nuclei", scale=(1.16, 0.26, 0.26), units="um")
    panel = open_dock(viewer).training
    panel.steps_spin.value, panel.minutes_spin.value = 100, 0
    panel.job = fine_tune_job(panel.request())  # built, not started
    try:
        panel._on_step(1, 0.1)
        assert panel.eta() is None  # one step: no rate yet
        clock[0] = 110.0
        panel._on_step(2, 0.1)  # 10 s a step
        assert panel.eta() == pytest.approx(98 * 10)
        clock[0] = 115.0
        assert panel.eta() == pytest.approx(98 * 10 - 5)
        clock[0] = 2000.0  # far slower than so far: never below zero
        assert panel.eta() == 0
    finally:
        panel.job = None


@pytest.mark.slow  # a napari viewer and a short run
def test_the_run_says_what_it_gained_over_its_start_weights(qtbot, make_napari_viewer, nuclei, tiny_user_weights):
    """The status line and the card gave the held-out gains over bilinear and bicubic only
    ('+11.38 dB vs bilinear', which the start weights had mostly had already: +9.32 at step 0), so
    whether fine-tuning helped this volume was nowhere once the run ended."""
    from napari_niiv.inference.weights import read_metadata

    viewer = make_napari_viewer()
    viewer.add_image(nuclei[:, :64, :64], name="nuclei", scale=(1.16, 0.26, 0.26), units="um")
    panel = open_dock(viewer, "user/tiny").training
    panel.steps_spin.value, panel.minutes_spin.value, panel.name_edit.value = 10, 0, "lm"
    panel.start_button.native.click()
    assert panel.job is not None, panel.status_label.value
    qtbot.waitUntil(lambda: panel.job is None, timeout=120_000)
    card = json.loads(read_metadata(tiny_user_weights / "lm.safetensors")["card"])
    start, end = card["held_out_start"], card["held_out"]
    assert start["cf_psnr"] == pytest.approx(panel.plot.check_psnr[0])  # the step-0 check, as plotted
    gain = end["cf_psnr"] - start["cf_psnr"]
    assert f"saved 'user/lm', {gain:+.2f} dB CF-PSNR over the start weights, held-out" in panel.status_label.value
    md = (tiny_user_weights / "lm.md").read_text()
    assert f"the start weights there: CF-PSNR {start['cf_psnr']:.2f} dB" in md and f"gained {gain:+.2f} dB" in md


@pytest.mark.slow  # a napari viewer
def test_the_visible_region_asked_for_in_a_3d_view_says_to_switch_to_2d(
    make_napari_viewer, nuclei, tmp_path, monkeypatch
):
    """'visible region' in a 3D view, the volume shown whole, was refused as 'nothing of the volume
    is visible in a 2D view: pan to it'."""
    monkeypatch.setenv("NIIV_WEIGHTS_DIR", str(tmp_path))
    viewer = make_napari_viewer()
    viewer.add_image(nuclei[:, :96, :96], name="nuclei", scale=(1.16, 0.26, 0.26), units="um")
    panel = open_dock(viewer).training
    panel.region_choice.value = "visible region"
    viewer.dims.ndisplay = 3
    panel.start_button.native.click()
    assert panel.job is None
    assert panel.status_label.value.startswith(
        "learn from: the visible region is that of a 2D view, and the view is 3D"
    )
    viewer.dims.ndisplay = 2
    viewer.reset_view()
    (region,) = panel.request().regions  # in 2D it is the visible part
    assert region[0] == slice(0, 15)


def test_the_loss_plot_draws_a_long_run_in_a_few_points_per_pixel(qtbot):
    """Each step repaints the plot, which drew every step's point of both curves (and measured the
    font for each): 90 ms a paint at 1,000 steps, 1.2 s at 20,000, 7 s at 100,000 (steps go to
    200,000), all on the GUI thread. Now at most four points per pixel column, spanning what all
    of that column's points did."""
    from napari_niiv._napari.loss_plot import LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(400, 160)
    rng = np.random.default_rng(0)
    n = 20_000
    steps, ys = list(range(1, n + 1)), rng.normal(-2.0, 0.3, n).tolist()
    lo, hi = min(ys), max(ys)
    r = plot.plot_rect()

    def x_of(step):
        return r.left() + (step - 0) / (n - 0) * r.width()

    path = plot._path(steps, ys, x_of, lo, hi)
    assert path.elementCount() <= 4 * (r.width() + 2)
    box = path.boundingRect()  # the whole curve still: first to last step, lowest to highest loss
    assert box.left() == pytest.approx(x_of(1)) and box.right() == pytest.approx(x_of(n))
    assert box.top() == pytest.approx(r.top()) and box.bottom() == pytest.approx(r.bottom())
    spread = plot._path(steps[:50], ys[:50], lambda s: r.left() + s / 50 * r.width(), lo, hi)
    assert spread.elementCount() == 50  # a few points over many columns: all drawn
    for step, loss in zip(steps, np.exp(ys).tolist(), strict=True):
        plot.steps.append(step)
        plot.losses.append(loss)
    assert not plot.grab().isNull()


@pytest.mark.slow
def test_a_full_disk_while_the_card_is_amended_is_an_oserror_and_keeps_the_weights(tmp_path) -> None:
    """After a run the panel's job rewrites the weights with the run's card (amend_card) through
    safetensors' save_file, whose full-disk error is its own SafetensorError: the run ended in
    'error: Error while serializing: I/O error ...'. It is now the OSError it is (ENOSPC), and the
    weights written by the run stay whole."""
    from .test_audit13_traincli import _in_tmpfs

    disk = tmp_path / "disk"
    disk.mkdir()
    script = f"""
import errno
from pathlib import Path
from napari_niiv.inference.weights import load_weights, save_weights
from napari_niiv.model import NiivConfig, NiivModel
from napari_niiv.training.finetune import amend_card
w = save_weights(Path({str(disk)!r}) / "w.safetensors", NiivModel(NiivConfig.named("v1")), 4.0, None)
try:
    amend_card(w, {{"ended": "complete"}})
except OSError as exc:
    print("OSError", exc.errno == errno.ENOSPC, sorted(p.name for p in w.parent.iterdir()), load_weights(w).alpha_range)
"""
    res = _in_tmpfs(disk, "9m", script)  # one copy of the 6 MB weights fits, the rewrite's second does not
    if res is None:
        pytest.skip("no small tmpfs can be mounted here (unshare -rm)")
    assert res.stdout.strip() == "OSError True ['w.safetensors'] (4.0, 4.0)", res.stdout + res.stderr


def _dock_running_ten_steps(make_napari_viewer, nuclei):
    """A viewer with the nuclei and the niiv dock, fine-tuning 'lm' for 10 steps from user/tiny:
    (the dock's widget, the run's job)."""
    viewer = make_napari_viewer()
    viewer.add_image(nuclei[:, :64, :64], name="nuclei", scale=(1.16, 0.26, 0.26), units="um")
    widget = open_dock(viewer, "user/tiny")
    panel = widget.training
    panel.steps_spin.value, panel.minutes_spin.value, panel.name_edit.value = 10, 0, "lm"
    panel.start_button.native.click()
    assert panel.job is not None, panel.status_label.value
    return widget, panel.job


@pytest.mark.slow  # a napari viewer and a run
def test_closing_the_dock_during_a_run_does_not_freeze_the_window_and_says_so(
    qtbot, make_napari_viewer, nuclei, tiny_user_weights, monkeypatch
) -> None:
    """napari's close button on the dock stopped the run and then waited on the GUI thread for its
    step to end (3.3 s frozen on this volume), and nothing said the run had stopped. Here the run's
    thread is held before training, so a wait could only end by its timeout: the close must not
    wait at all, and napari's notifications say how to continue the run."""
    import threading

    from napari.utils.notifications import notification_manager
    from qtpy import sip

    from napari_niiv.training import finetune

    release = threading.Event()
    train = finetune.train
    monkeypatch.setattr(finetune, "train", lambda *a, **kw: release.wait() and train(*a, **kw))
    waits = gui_thread_waits(monkeypatch, finetune.FineTuneJob)
    widget, job = _dock_running_ten_steps(make_napari_viewer, nuclei)
    told = len(notification_manager.records)
    try:
        widget.parent().title.close_button.click()  # what the user clicks
        qtbot.waitUntil(lambda: sip.isdeleted(widget), timeout=10_000)
        assert not any(waits), f"closing the dock waited on the GUI thread for the run: join{waits}"
        assert job.running and job.stop_requested.is_set()
        said = [n.message for n in notification_manager.records[told:]]
        assert any(
            m.startswith("niiv: closing the dock stopped the fine-tuning of 'lm' after its current step")
            and m.endswith("Resume it under the same name")
            for m in said
        ), said
    finally:
        release.set()
    assert job.join(60)


@pytest.mark.slow  # a napari viewer and a sample
def test_a_fine_tuning_of_a_sample_says_which_layer_of_the_sample_it_learned_from(
    make_napari_viewer, monkeypatch, tiny_user_weights
) -> None:
    """The card of a fine-tuning on the FIB-SEM sample's pooled layer gave as its source the file
    medulla_b.tif, the isotropic ground truth, not the volume pooled by 8 it learned from (reported
    by audit 13: savesample, fixed there for saves)."""
    monkeypatch.setenv("NIIV_DATA_DIR", str(data_path()))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-niiv", "fibsem_anisotropic")
    panel = open_dock(viewer, "user/tiny").training
    cube = data_path("fibsem", "medulla_b.tif")
    assert panel.request().source == f"'medulla_b pooled x8' of the napari-niiv sample fibsem_anisotropic, from {cube}"


@pytest.mark.slow  # a napari viewer and a run
def test_closing_the_dock_after_a_run_ended_says_no_run_was_stopped(
    qtbot, make_napari_viewer, nuclei, tiny_user_weights
) -> None:
    """A run that has ended, its last signal still queued for the GUI thread, is not running: the
    dock closed then said it 'stopped the fine-tuning' (found by a review of 349a615)."""
    from napari.utils.notifications import notification_manager
    from qtpy import sip

    widget, job = _dock_running_ten_steps(make_napari_viewer, nuclei)
    assert job.join(120)  # ended on its thread; the GUI thread has not run since: its signal waits
    told = len(notification_manager.records)
    widget.parent().title.close_button.click()
    qtbot.waitUntil(lambda: sip.isdeleted(widget), timeout=10_000)
    said = [n.message for n in notification_manager.records[told:]]
    assert not any("stopped the fine-tuning" in m for m in said), said
