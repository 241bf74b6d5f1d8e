"""The dock as a user meets it, in the real napari viewer under Xvfb: nothing clipped at 1500x900,
a tooltip on every control, "?" opens the guide, errors name the control to change, the loss plot
(axes, legend outside the data, CSV export), one inline progress bar, and fine-tuning as a napari
thread worker that napari's activity dock can cancel."""

from __future__ import annotations

import csv
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.slow  # a napari viewer (or at least a Qt application) each

from tests.conftest import open_dock  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def settle(qtbot, ms: int = 300) -> None:
    qtbot.wait(ms)


def label_fits(label) -> str | None:
    """Why ``label``'s text does not show whole, or None: one line fits its width, wrapped text
    gets the height it needs."""
    from qtpy.QtCore import Qt
    from qtpy.QtGui import QTextDocument

    text = label.text()
    if not text:
        return None
    width = label.contentsRect().width()
    if label.wordWrap():
        need = label.heightForWidth(label.width())
        return None if label.height() >= need else f"{text!r}: {label.height()} px high, needs {need}"
    if Qt.mightBeRichText(text):
        doc = QTextDocument()
        doc.setDefaultFont(label.font())
        doc.setHtml(text)
        advance = int(np.ceil(doc.idealWidth())) - 2 * int(doc.documentMargin())
    else:
        advance = label.fontMetrics().horizontalAdvance(text)
    return None if advance <= width else f"{text!r}: {width} px wide, needs {advance}"


def controls(root):
    """Every control a user can operate under ``root`` (not the parts inside a spin or combo box)."""
    from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit, QProgressBar

    from napari_niiv._napari.loss_plot import LossPlot

    kinds = (QAbstractButton, QComboBox, QAbstractSpinBox, QLineEdit, QProgressBar, LossPlot)
    found = []
    for w in root.findChildren(kinds):
        parent, inner = w.parentWidget(), False
        while parent is not None and parent is not root:
            inner = inner or isinstance(parent, (QAbstractSpinBox, QComboBox))
            parent = parent.parentWidget()
        if not inner:
            found.append(w)
    return found


def test_the_dock_at_1500x900_clips_no_text_and_every_control_has_a_tooltip(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    from qtpy.QtCore import QRectF
    from qtpy.QtWidgets import QAbstractButton, QLabel

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 900)
    viewer.add_image(cremi64, name="cremi", scale=(40, 4, 4))
    widget = open_dock(viewer)
    panel = widget.training
    # real messages, long ones: an isotropic layer's (in both status lines) and a loss history
    iso = viewer.add_image(cremi64[:4], name="no voxel sizes")
    widget.volume_choice.value = iso
    assert widget.status_label.value.startswith("alpha (z / xy): 'no voxel sizes' has the same scale")
    panel.lr_edit.value = "fast please"
    panel.start()
    # no fine-tuning at a made-up alpha: the layer's alpha is asked for first (bad learning rates: below)
    assert panel.status_label.value.startswith("alpha (z / xy): 'no voxel sizes' has the same scale")
    for step in range(1, 301):
        panel.plot.add_loss(step, 0.05 * np.exp(-step / 100) + 0.01 * np.sin(step))
    for step in (0, 100, 200, 300):
        panel.plot.add_check(step, -0.3 + step / 150, 30 + step / 150)
    settle(qtbot)
    window = viewer.window._qt_window
    assert (window.width(), window.height()) == (1500, 900)
    assert widget.isVisible() and widget.width() >= widget.minimumSizeHint().width()

    inner = widget.widget()
    assert inner.width() <= widget.viewport().width(), "the dock cuts its controls off on the right"
    labels = [lab for lab in inner.findChildren(QLabel) if lab.isVisible()]
    assert len(labels) >= 15
    clipped = [why for lab in labels if (why := label_fits(lab))]
    assert not clipped, clipped
    for status in (widget.status_label.native, panel.status_label.native):
        assert status.wordWrap() and status.width() >= inner.width() - 20, "a status line is squeezed"
    for button in inner.findChildren(QAbstractButton):
        need = button.fontMetrics().horizontalAdvance(button.text())
        assert button.width() >= min(button.sizeHint().width(), need + 8), f"{button.text()!r} is cut"
    # the plot's text sits beside the data area, never on it, and inside the plot
    plot = panel.plot
    data = plot.plot_rect()
    for rect in plot.text_rects():
        assert not rect.intersects(data), f"text at {rect} is drawn over the curves"
        assert QRectF(plot.rect()).contains(rect), f"text at {rect} is outside the plot"
    assert plot.geometry().bottom() < panel.status_label.native.geometry().top(), "the status overlaps the plot"

    found = controls(inner)
    assert len(found) >= 20
    missing = [f"{type(w).__name__} {getattr(w, 'text', lambda: '')()!r}" for w in found if not w.toolTip()]
    assert not missing, f"controls without a tooltip: {missing}"
    for name in ("volume_choice", "weights_choice", "device_choice", "save_button", "help_button"):
        assert getattr(widget, name).native.toolTip(), name


def test_the_help_button_opens_the_napari_guide(qtbot, make_napari_viewer):
    from qtpy.QtCore import QObject, QUrl, Slot
    from qtpy.QtGui import QDesktopServices

    from napari_niiv._napari.widget import GUIDE_URL

    class Catch(QObject):
        def __init__(self) -> None:
            super().__init__()
            self.urls: list[str] = []

        @Slot(QUrl)
        def open(self, url: QUrl) -> None:
            self.urls.append(url.toString())

    viewer = make_napari_viewer()
    widget = open_dock(viewer)
    catch = Catch()
    QDesktopServices.setUrlHandler("https", catch, "open")  # Qt's hook: no browser starts
    try:
        widget.help_button.native.click()
    finally:
        QDesktopServices.unsetUrlHandler("https")
    assert catch.urls == [GUIDE_URL]
    assert GUIDE_URL.endswith("/blob/main/docs/napari.md") and (ROOT / "docs" / "napari.md").is_file()
    assert "napari.md" in widget.help_button.native.toolTip()


def test_errors_name_the_control_to_change(qtbot, make_napari_viewer, cremi64, tiny_user_weights, tmp_path):
    viewer = make_napari_viewer()
    widget = open_dock(viewer)
    panel = widget.training

    widget.live_check.value = True  # no volume yet
    assert widget.status_label.value.startswith("volume: no layer selected") and not widget.live_check.value
    assert widget.save_to(tmp_path / "x") is None and widget.status_label.value.startswith("volume:")

    layer = viewer.add_image(cremi64, name="cremi", scale=(40, 4, 4))
    assert widget.volume_choice.value is layer
    viewer.add_image(cremi64[:3], name="far", scale=(400, 2, 2))  # z voxels 200 x xy: outside alpha's range
    widget.volume_choice.value = viewer.layers["far"]
    assert widget.status_label.value.startswith("alpha (z / xy): 'far' has z voxels 200 times")
    assert not widget.confirm_alpha_button.native.isHidden()  # asks, as for a layer with no anisotropy
    widget.live_check.value = True  # refused: never run at the alpha box's leftover value
    assert widget.live_view is None and not widget.live_check.value
    assert "200 times" in widget.status_label.value and "niiv does not run until then" in widget.status_label.value
    widget.alpha_spin.value = 50  # the user sets alpha: the waiting message goes
    assert widget.status_label.value == "alpha (z / xy): 50, as you set it for 'far'"
    assert widget.confirm_alpha_button.native.isHidden() and widget.runnable_settings().alpha == 50
    viewer.add_image(cremi64, name="mirrored", scale=(40, 4, -4))  # a flip: said on selection, not as alpha -10
    widget.volume_choice.value = viewer.layers["mirrored"]
    assert widget.status_label.value.startswith("volume: 'mirrored' has a negative or zero scale on x (a flip)")
    assert widget.confirm_alpha_button.native.isHidden()
    widget.volume_choice.value = layer

    (tmp_path / "taken.ome.zarr").mkdir()
    assert widget.save_to(tmp_path / "taken.ome.zarr") is None
    assert widget.status_label.value.startswith("Save isotropic volume...:") and "already exists" in (
        widget.status_label.value
    )

    widget.weights_choice.value = "user/tiny"
    (tiny_user_weights / "tiny.safetensors").unlink()
    widget.live_check.value = True
    assert widget.status_label.value.startswith("weights: 'user/tiny'") and widget.live_view is None
    panel.start()  # the panel refuses them too (test_napari_training: deleted since picked)
    assert panel.status_label.value.startswith("weights: unknown weights 'user/tiny'") and panel.job is None
    widget.weights_choice.value = "niiv-fast"  # weights that exist: the panel's own controls next

    panel.name_edit.value = "  "
    panel.start()
    assert panel.status_label.value.startswith("save as: give the new weights a name") and panel.job is None
    panel.name_edit.value = "mine"
    panel.region_choice.value = "boxes of a Shapes layer"
    panel.start()
    assert panel.status_label.value.startswith("boxes: add a Shapes layer") and panel.job is None
    panel.region_choice.value = "whole volume"
    panel.lr_edit.value = "0.5"
    panel.start()
    assert panel.status_label.value.startswith("learning rate '0.5'") and panel.job is None


def live_xz_view(qtbot, viewer, volume):
    """The dock's live view (tiny user weights, fp32) of an xz view of ``volume``, first image shown."""
    viewer.add_image(volume, name="cremi", scale=(40, 4, 4))
    widget = open_dock(viewer)
    widget.weights_choice.value = "user/tiny"
    widget.precision_choice.value = "fp32"
    viewer.dims.order = (1, 0, 2)  # an xz view
    widget.live_check.value = True
    qtbot.waitUntil(lambda: widget.live_view is not None and bool(widget.live_view.timings), timeout=60_000)
    return widget


def test_closing_the_dock_stops_its_work_and_reopening_gives_one_dock(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    """napari's close button on a dock only takes the widget out of it (remove_dock_widget): the
    live view must stop with the dock, the closed dock must not answer the viewer's layer events,
    and Plugins > niiv then opens one working dock, not a second one beside a hidden first."""
    from qtpy import sip

    viewer = make_napari_viewer(show=True)
    widget = live_xz_view(qtbot, viewer, cremi64)
    live = widget.live_view
    worker = live._worker._thread
    assert list(viewer.window.dock_widgets.values()) == [widget]
    dock = widget.parent()  # napari's dock around it

    dock.title.close_button.click()  # what the user clicks
    qtbot.waitUntil(lambda: sip.isdeleted(widget), timeout=10_000)
    assert live._closed and not worker.is_alive()
    assert not viewer.window.dock_widgets

    viewer.add_image(cremi64[:, :32], name="second", scale=(40, 4, 4))  # the closed dock hears nothing
    viewer.layers.remove("second")
    again = open_dock(viewer)
    assert list(viewer.window.dock_widgets.values()) == [again] and again is not widget
    assert again.volume_choice.value is viewer.layers["cremi"]


def test_a_dock_opened_again_has_the_closed_docks_settings(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    """The closed dock's settings came back as defaults in the next one (the dock audit): the
    volume picked, an alpha given for a layer whose scale says nothing, weights and sections
    picked, orientation, output scale, precision, the niiv-fast and confidence boxes and the
    fine-tuning settings are as they were; live is off until ticked. Layers are not held by it."""
    from qtpy import sip

    viewer = make_napari_viewer(show=True)
    first = viewer.add_image(cremi64, name="first", scale=(40, 4, 4))
    flat = viewer.add_image(cremi64[:, :48], name="flat")  # scale (1, 1, 1): alpha must be given
    widget = open_dock(viewer)
    widget.volume_choice.value = flat
    widget.alpha_spin.value = 6.5
    widget.weights_choice.value = "user/tiny"
    widget.sections_choice.value = "thin"
    widget.volume_choice.value = first  # the user's pick, below the newest layer
    widget.orientation_choice.value, widget.scale_spin.value, widget.precision_choice.value = "yz", 1.5, "fp32"
    widget.fast_check.value, widget.confidence_check.value = False, True
    panel = widget.training
    panel.steps_spin.value, panel.minutes_spin.value, panel.lr_edit.value = 300, 2.5, "3e-4"
    panel.region_choice.value = "visible region"
    widget.parent().title.close_button.click()
    qtbot.waitUntil(lambda: sip.isdeleted(widget), timeout=10_000)

    again = open_dock(viewer)
    assert again.volume_choice.value is first and not again.live_check.value
    assert "when it was closed" in again.status_label.value
    assert (again.orientation_choice.value, again.scale_spin.value, again.precision_choice.value) == ("yz", 1.5, "fp32")
    assert (again.fast_check.value, again.confidence_check.value, again.sections_choice.value) == (False, True, "thin")
    p = again.training
    assert (p.steps_spin.value, p.minutes_spin.value, p.lr_edit.value) == (300, 2.5, "3e-4")
    assert p.region_choice.value == "visible region"
    again.volume_choice.value = flat
    assert again.alpha_spin.value == 6.5 and not again.alpha_unknown(flat) and again.alpha() == 6.5
    assert again.weights_choice.value == "user/tiny"

    gone = weakref.ref(flat)
    viewer.layers.remove(flat)
    del flat
    gc.collect()
    qtbot.waitUntil(lambda: gone() is None, timeout=5_000)


def test_a_dock_opened_again_says_what_did_not_come_back(qtbot, make_napari_viewer, tmp_path, tiny_user_weights):
    """The reopened dock said its settings were back even when the volume picked was closed, the
    weights picked were deleted or the close had stopped a save; a typed weights name came back as
    the one offered, so a run stopped under it could not be resumed (review of e0a17a0)."""
    import shutil

    from qtpy import sip

    from napari_niiv.data import open_volume
    from tests.conftest import data_path

    cremi = np.asarray(open_volume(data_path("anisotropic_em", "cremi_a.tif")).data)  # a save of seconds
    viewer = make_napari_viewer(show=True)
    big = viewer.add_image(cremi, name="big", scale=(40, 4, 4))
    small = viewer.add_image(cremi[:, :64, :64], name="small", scale=(40, 4, 4))
    shutil.copy(tiny_user_weights / "tiny.safetensors", tiny_user_weights / "gone.safetensors")
    widget = open_dock(viewer)
    widget.volume_choice.value = big
    widget.weights_choice.value = "user/tiny"
    widget.precision_choice.value = "fp32"
    widget.training.name_edit.value = "my-run"
    saver = widget.save_to(tmp_path / "big.ome.zarr")
    assert saver is not None and saver.running
    widget.parent().title.close_button.click()
    qtbot.waitUntil(lambda: sip.isdeleted(widget), timeout=30_000)

    again = open_dock(viewer)
    assert again.training.name_edit.value == "my-run"
    status = again.status_label.value
    assert f"stopped the save to {tmp_path / 'big.ome.zarr'}" in status and "same path continues it" in status

    again.weights_choice.reset_choices()
    again.weights_choice.value = "user/gone"  # picked for big
    again.parent().title.close_button.click()
    qtbot.waitUntil(lambda: sip.isdeleted(again), timeout=10_000)
    (tiny_user_weights / "gone.safetensors").unlink()
    third = open_dock(viewer)
    assert third.volume_choice.value is big and "the weights picked, user/gone, are gone" in third.status_label.value

    third.volume_choice.value = small
    third.parent().title.close_button.click()
    qtbot.waitUntil(lambda: sip.isdeleted(third), timeout=10_000)
    viewer.layers.remove(small)
    fourth = open_dock(viewer)
    assert "the volume picked was closed" in fourth.status_label.value


def test_a_settings_change_never_waits_for_the_old_live_view(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    """A new setting replaces the live view while it computes: the GUI thread must not wait for
    the old view's thread to finish its step (on a CPU up to a second or more; a join here
    stalled the window for 0.1-1 s per change). The old thread, held in a step, asks the GUI
    thread for an answer only an event loop that is free can give; its late results are dropped."""
    import threading

    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    widget = live_xz_view(qtbot, viewer, cremi64)
    old = widget.live_view
    started, answered, verdict = threading.Event(), threading.Event(), []

    def one_long_step(cancelled):
        started.set()
        verdict.append(answered.wait(5))  # the old code's join waited 10 s
        raise RuntimeError("a late failure of the replaced view")  # must not reach the status

    old._worker.submit(one_long_step)
    assert started.wait(30)
    QTimer.singleShot(0, answered.set)  # runs once the GUI thread is back in its event loop
    widget.orientation_choice.value = "yz"  # replaces the live view
    qtbot.waitUntil(lambda: bool(verdict), timeout=20_000)
    assert verdict == [True], "the GUI thread waited for the old live view's step"
    qtbot.waitUntil(lambda: old._worker.stopped, timeout=10_000)
    new = widget.live_view
    assert new is not old and new.settings.orientation == "yz"
    qtbot.waitUntil(lambda: bool(new.timings) and "niiv" in new.timings[-1], timeout=60_000)
    assert "failed" not in str(widget.status_label.value)


def test_a_new_setting_reuses_the_volume_the_live_view_read(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    """A lazy layer is read once (into memory, when it fits) and normalised once: a new setting
    replaces the live view, and the new one starts from what the old one read."""
    import dask.array as da

    blocks_read = []

    def counted(block):
        blocks_read.append(block.shape)
        return block

    lazy = da.from_array(cremi64, chunks=(4, 32, 32)).map_blocks(counted, meta=np.empty((0, 0, 0), cremi64.dtype))
    viewer = make_napari_viewer()
    widget = live_xz_view(qtbot, viewer, lazy)
    old, norm = weakref.ref(widget.live_view), widget.live_view._norm
    assert blocks_read, "the live view never read the layer"
    blocks_read.clear()
    widget.orientation_choice.value = "yz"
    qtbot.waitUntil(lambda: old()._worker.stopped, timeout=30_000)
    gc.collect()  # the old view, freed: the new one holds what it read (the read itself is kept weakly)
    assert old() is None
    new = widget.live_view
    qtbot.waitUntil(lambda: bool(new.timings) and "niiv" in new.timings[-1], timeout=60_000)
    assert blocks_read == [] and new._norm == norm


def test_settings_changed_during_the_first_read_wait_for_it_instead_of_reading_again(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    """Each setting changed while the first live view still read a lazy volume started one more
    whole read (none of which could stop): 5 changes on a 400 MiB store held 6.5 GiB (the
    live-view audit). The views now share one read."""
    import threading

    import dask
    import dask.array as da

    gate, reads = threading.Event(), []

    def held(block):
        if threading.current_thread().name == "niiv-live":  # not napari's own slicing
            first = not reads
            reads.append(block.shape)
            if first:
                gate.wait(60)  # the first read takes long
        return block

    lazy = da.from_array(cremi64, chunks=(8, 32, 32)).map_blocks(held, meta=np.empty((0, 0, 0), cremi64.dtype))
    chunks = int(np.prod(lazy.numblocks))
    viewer = make_napari_viewer()
    viewer.add_image(lazy, name="cremi", scale=(40, 4, 4))
    widget = open_dock(viewer)
    widget.weights_choice.value = "user/tiny"
    widget.precision_choice.value = "fp32"
    viewer.dims.order = (1, 0, 2)
    with dask.config.set(scheduler="synchronous"):  # chunks read by the thread that asks: the live view's
        try:
            widget.live_check.value = True
            qtbot.waitUntil(lambda: bool(reads), timeout=30_000)
            for alpha in (9.0, 11.0, 12.0):  # each replaces the live view while the first still reads
                widget.alpha_spin.value = alpha
                qtbot.wait(300)
        finally:
            gate.set()
        live = widget.live_view
        qtbot.waitUntil(lambda: bool(live.timings) and "niiv" in live.timings[-1], timeout=60_000)
    assert len(reads) == chunks, f"{len(reads) / chunks:.1f} reads of the volume"


def test_data_replaced_during_the_first_read_is_the_data_rendered(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights, monkeypatch
):
    """The layer's data replaced while the live view's thread is still reading the old data: that
    render must not keep the old data for the views after it."""
    import threading

    from napari_niiv._napari import layer_view

    reading, release = threading.Event(), threading.Event()
    readable = layer_view.readable

    def slow_first_read(data):
        if not reading.is_set():
            reading.set()
            release.wait(30)
        return readable(data)

    monkeypatch.setattr(layer_view, "readable", slow_first_read)  # what the shared read reads with
    viewer = make_napari_viewer()
    layer = viewer.add_image(cremi64, name="cremi", scale=(40, 4, 4))
    widget = open_dock(viewer)
    widget.weights_choice.value = "user/tiny"
    widget.precision_choice.value = "fp32"
    viewer.dims.order = (1, 0, 2)  # an xz view
    widget.live_check.value = True
    qtbot.waitUntil(reading.is_set, timeout=30_000)  # the event loop runs the live view's timer
    inverted = (255 - cremi64).astype(cremi64.dtype)
    layer.data = inverted  # the user (or a plugin) replaces the data meanwhile
    release.set()
    live = widget.live_view
    qtbot.waitUntil(lambda: len(live.timings) >= 1 and not live.busy, timeout=60_000)
    qtbot.wait(200)
    assert live._renderer is not None and live._renderer.view.data is inverted


def test_a_live_view_that_cannot_start_unticks_its_box_and_says_why(qtbot, make_napari_viewer, tiny_user_weights):
    """A constant volume fails in the live view's first step (its normalisation): the box unticks
    and the message stays (it stayed ticked, over a live view that could never show anything)."""
    viewer = make_napari_viewer()
    viewer.add_image(np.full((8, 32, 32), 7, np.uint8), name="flat", scale=(8, 1, 1))
    widget = open_dock(viewer)
    widget.weights_choice.value = "user/tiny"
    viewer.dims.order = (1, 0, 2)
    widget.live_check.value = True
    qtbot.waitUntil(lambda: not widget.live_check.value, timeout=60_000)
    assert widget.status_label.value.startswith("live view failed: the volume is constant"), widget.status_label.value
    assert widget.live_view is None


def test_the_loss_plot_exports_its_history_as_csv(qtbot, tmp_path):
    from napari_niiv._napari.loss_plot import CSV_COLUMNS, LossPlot, log_ticks, nice_ticks

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(420, 180)
    plot.add_check(0, -0.25, 29.5)  # the start weights, before any step
    for step, loss in enumerate([0.08, 0.06, 0.07, 0.05, 0.04], start=1):
        plot.add_loss(step, loss)
    plot.add_check(5, 0.5, 30.25)
    out = tmp_path / "history.csv"
    assert plot.write_csv(out) == 6
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4, 5]
    assert rows[0]["loss"] == "" and float(rows[0]["heldout_gain_db"]) == -0.25
    assert float(rows[0]["heldout_cf_psnr_db"]) == 29.5
    assert [float(r["loss"]) for r in rows[1:]] == [0.08, 0.06, 0.07, 0.05, 0.04]
    assert float(rows[5]["heldout_gain_db"]) == 0.5 and rows[3]["heldout_gain_db"] == ""
    smoothed = [float(r["loss_smoothed"]) for r in rows[1:]]
    assert smoothed[0] == 0.08 and min(smoothed) >= 0.04 - 1e-9 and max(smoothed) <= 0.08 + 1e-9

    # ticks are round numbers inside the range; a log axis gets decades (and 2, 5 on short ones)
    assert nice_ticks(0, 300, 4) == [0, 100, 200, 300]
    assert nice_ticks(-0.3, 1.7, 3) == [0.0, 0.5, 1.0, 1.5]
    assert log_ticks(np.log10(0.004), np.log10(0.3)) == [0.005, 0.01, 0.02, 0.05, 0.1, 0.2]
    image = plot.grab().toImage()
    assert image.width() == 420 and len({image.pixel(x, 90) for x in range(0, 420, 3)}) > 3  # something drawn


def test_fine_tuning_is_a_napari_worker_that_the_activity_dock_cancels(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    from napari.qt.threading import GeneratorWorker
    from napari.utils import progress

    viewer = make_napari_viewer()
    viewer.add_image(cremi64, name="cremi", scale=(40, 4, 4))
    widget = open_dock(viewer)
    widget.weights_choice.reset_choices()
    widget.weights_choice.value = "user/tiny"
    panel = widget.training
    panel.steps_spin.value = 5000
    panel.minutes_spin.value = 0
    panel.name_edit.value = "cancel-me"
    assert widget.activity_bar.label.text() == "niiv: idle"
    panel.start_button.native.click()
    assert panel.job is not None, panel.status_label.value
    assert isinstance(panel.worker, GeneratorWorker) and panel.bar in progress._all_instances
    tasks = viewer.window._qt_window._window._task_status_manager
    assert tasks.is_busy(), "napari does not know the run is going (closing would not ask)"
    qtbot.waitUntil(lambda: len(panel.plot.losses) >= 3, timeout=120_000)
    qtbot.waitUntil(lambda: widget.activity_bar.label.text().startswith("fine-tuning on 'cremi': step"), timeout=5000)
    assert widget.activity_bar.bar.maximum() == 5000 and widget.activity_bar.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: panel.bar.n >= 3, timeout=5000)  # the bar moves at most every BAR_EVERY_S

    dock_bar = viewer.window._qt_window._activity_dialog.get_pbar_from_prog(panel.bar)
    dock_bar.cancel_button.click()  # napari's activity dock
    qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)
    assert "stopped at step" in panel.status_label.value, panel.status_label.value
    assert panel.plot.steps[-1] < 5000 and (tiny_user_weights / "cancel-me.ckpt.safetensors").exists()
    qtbot.waitUntil(lambda: not tasks.is_busy(), timeout=10_000)
    qtbot.waitUntil(lambda: widget.activity_bar.label.text() == "niiv: idle", timeout=5000)


def test_the_inline_bars_cancel_button_cancels(qtbot):
    """Clicking Cancel (the real button: Qt passes its checked state) stops the work; it raised a
    TypeError instead, and headless PyQt6 aborted the process (found by the lazy-layer audit)."""
    from napari_niiv._napari.activity import Activity, ActivityBar

    asked = []
    bar = ActivityBar(lambda: [Activity("saving", 1, 10, lambda: asked.append(1), "Cancel the save")])
    qtbot.addWidget(bar)
    bar.refresh()
    assert bar.cancel_button.isEnabled()
    bar.cancel_button.click()
    assert asked == [1]


def test_the_inline_bar_repaints_with_the_window_not_inside_its_refresh(qtbot):
    """QProgressBar.setValue repaints at once, which beside napari's OpenGL canvas flushes the
    whole window (25-80 ms under software OpenGL); the bar's refresh leaves its paint to the next
    ordinary repaint, and still shows every value."""
    from qtpy.QtCore import QEvent, QObject

    from napari_niiv._napari.activity import Activity, ActivityBar

    work = [Activity("saving", 1, 10)]
    bar = ActivityBar(lambda: list(work))
    qtbot.addWidget(bar)
    bar.show()
    qtbot.waitExposed(bar)
    qtbot.wait(50)

    class Paints(QObject):
        count = 0

        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.Paint:
                self.count += 1
            return False

    paints = Paints()
    bar.bar.installEventFilter(paints)
    for done in (2, 3, 7):
        work[0] = Activity("saving", done, 10)
        bar.refresh()
        assert paints.count == 0 and bar.bar.value() == done and bar.bar.updatesEnabled()
    qtbot.waitUntil(lambda: paints.count > 0, timeout=2000)  # painted in the next event loop pass

    def broken() -> list[Activity]:
        raise RuntimeError("source failed")

    bar.sources = broken
    with pytest.raises(RuntimeError):
        bar.refresh()
    assert bar.bar.updatesEnabled()
    bar.stop()
