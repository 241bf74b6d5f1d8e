"""Saving without blocking: the store's cooperative cancel, and the widget's background save
(cancel, resume to the same result, a window that keeps responding)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zarr

from napari_niiv.data import open_volume
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.runners import ThreadedRunner
from napari_niiv.inference.store import (
    ArrayBlocks,
    Layout,
    WriteCancelled,
    WriteReport,
    partial_path,
    write_ome_zarr,
)
from napari_niiv.inference.weights import save_weights
from napari_niiv.model import NiivConfig
from tests.conftest import data_path, random_model


class CountingBlocks(ArrayBlocks):
    """An array as a block source that counts the blocks it computes."""

    def __init__(self, data: np.ndarray) -> None:
        super().__init__(data)
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, index):
        with self._lock:
            self.calls += 1
        return super().__call__(index)


def levels(path) -> list[np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return [np.asarray(group[key]) for key in sorted(group.array_keys(), key=int)]


@pytest.mark.parametrize("threads", [1, 2])
def test_a_cancelled_write_keeps_its_partial_store_and_resumes_to_the_same_store(tmp_path, threads):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (40, 48, 300), dtype=np.uint8)
    layout = Layout(data.shape, data.dtype, chunks=(8, 48, 300))  # 5 chunks at level 0; 2 levels
    write_ome_zarr(tmp_path / "whole.ome.zarr", layout, ArrayBlocks(data))

    out = tmp_path / "cut.ome.zarr"
    progress: list[int] = []
    source = CountingBlocks(data)
    with pytest.raises(WriteCancelled) as info:
        write_ome_zarr(
            out,
            layout,
            source,
            runner=ThreadedRunner(threads),
            resume=True,
            on_progress=lambda done, total: progress.append(done),
            cancelled=lambda: len(progress) > 1,  # after the first chunk written
        )
    partial = partial_path(out)
    assert info.value.partial == partial and partial.is_dir() and not out.exists()
    written = source.calls
    assert 1 <= written < 5, "the cancel stopped nothing, or came before any chunk"
    chunks = [p for p in (partial / "0" / "c").rglob("*") if p.is_file()]
    markers = list((partial / ".niiv" / "done" / "0").iterdir())
    assert len(chunks) == len(markers) == written, "a chunk was written without its marker, or after the cancel"

    again = CountingBlocks(data)
    report = write_ome_zarr(out, layout, again, resume=True)
    assert again.calls == 5 - written and report.chunks_resumed == written
    for resumed, whole in zip(levels(out), levels(tmp_path / "whole.ome.zarr"), strict=True):
        np.testing.assert_array_equal(resumed, whole)
    np.testing.assert_array_equal(levels(out)[0], data)


def test_a_cancelled_write_without_resume_leaves_nothing(tmp_path):
    data = np.zeros((16, 16, 16), np.float32)
    out = tmp_path / "x.ome.zarr"
    with pytest.raises(WriteCancelled):
        write_ome_zarr(
            out, Layout(data.shape, data.dtype, chunks=(4, 16, 16)), ArrayBlocks(data), cancelled=lambda: True
        )
    assert not out.exists() and not partial_path(out).exists()


# -- the widget's background save ------------------------------------------------------------------

TINY = NiivConfig(latent_dim=16, encoder_blocks=1, mlp_hidden=32, mlp_layers=2)


@pytest.fixture
def tiny_weights(tmp_path, monkeypatch) -> str:
    """A small random model in the user's weights folder: the widget lists it as user/tiny."""
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("NIIV_WEIGHTS_DIR", str(folder))
    save_weights(folder / "tiny.safetensors", random_model(TINY), 10.0, None)
    return "user/tiny"


@pytest.fixture(scope="module")
def cremi() -> np.ndarray:
    """Real serial-section TEM, alpha 10: (12, 48, 48) uint8, 120 x 48 x 48 isotropic."""
    return np.asarray(open_volume(data_path("anisotropic_em", "cremi_a.tif")).data[:12, :48, :48])


def open_widget(viewer, weights: str):
    _, widget = viewer.window.add_plugin_dock_widget("napari-niiv", "niiv isotropic view")
    widget.weights_choice.reset_choices()
    widget.weights_choice.value = weights
    # twenty chunks in two columns of ten: level-0 tasks compute a column at once, so a save can be
    # cut between the two
    widget.save_chunks = (12, 24, 48)
    return widget


def wait_for_save(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: widget.saver is None, timeout=180_000)


@pytest.mark.slow
def test_a_cancelled_background_save_resumes_to_the_result_of_an_uninterrupted_one(
    qtbot, make_napari_viewer, cremi, tiny_weights, tmp_path
):
    from napari.utils import progress

    viewer = make_napari_viewer()
    layer = viewer.add_image(cremi, name="cremi", scale=(40, 4, 4))
    widget = open_widget(viewer, tiny_weights)
    assert widget.alpha_spin.value == 10.0

    whole = widget.save_to(tmp_path / "whole")  # .ome.zarr is added
    assert whole is not None, widget.status_label.value
    wait_for_save(qtbot, widget)
    assert isinstance(whole.job.result, WriteReport), widget.status_label.value
    assert whole.job.out == tmp_path / "whole.ome.zarr" and "saved 'cremi'" in widget.status_label.value
    reference = levels(whole.job.out)
    assert reference[0].shape == (120, 48, 48) and reference[0].dtype == np.uint8

    # the same as napari's File > Save of the lazy layer (which runs in napari's save call)
    widget._reconstruct_whole()
    qtbot.waitUntil(lambda: widget.preparing == 0, timeout=60_000)  # prepared on a thread
    lazy = viewer.layers[-1]
    assert lazy.name == "cremi isotropic (niiv)"
    viewer.layers.selection = {lazy}
    viewer.layers.save(str(tmp_path / "lazy.ome.zarr"), selected=True, plugin="napari-niiv")
    np.testing.assert_allclose(levels(tmp_path / "lazy.ome.zarr")[0], reference[0], atol=1)
    viewer.layers.remove(lazy)
    viewer.layers.selection = {layer}

    # cut short from napari's activity dock, once its first column (ten chunks) is written: the
    # cancel stops the second one inside its computation (between the engine's layers and chunks)
    out = tmp_path / "cut.ome.zarr"
    done = partial_path(out) / ".niiv" / "done" / "0"
    cut = widget.save_to(out)
    assert cut is not None and cut.bar in progress._all_instances
    qtbot.waitUntil(lambda: done.is_dir() and len(list(done.iterdir())) >= 10, timeout=120_000)
    dock_bar = viewer.window._qt_window._activity_dialog.get_pbar_from_prog(cut.bar)
    assert dock_bar is not None and not dock_bar.cancel_button.isHidden()  # the dock shows Cancel
    dock_bar.cancel_button.click()
    wait_for_save(qtbot, widget)
    assert isinstance(cut.job.result, WriteCancelled), widget.status_label.value
    partial = partial_path(out)
    assert partial.is_dir() and not out.exists() and "save cancelled" in widget.status_label.value
    written = len(list(done.iterdir()))
    assert written == 10, "the cancel did not stop the save inside its second column"

    # the same save again continues it and ends where the uninterrupted one did
    again = widget.save_to(out)
    assert again is not None, widget.status_label.value
    wait_for_save(qtbot, widget)
    report = again.job.result
    assert isinstance(report, WriteReport), widget.status_label.value
    assert report.chunks_resumed == written and report.chunks_written == 20 - written
    assert f"{written} resumed" in widget.status_label.value and not partial.exists()
    for resumed, uninterrupted in zip(levels(out), reference, strict=True):
        np.testing.assert_array_equal(resumed, uninterrupted)

    # changed settings do not continue a partial store made with other ones
    stale = widget.save_to(tmp_path / "stale.ome.zarr")
    qtbot.waitUntil(lambda: stale.job.progress().done > stale.job.progress().first, timeout=120_000)
    widget.cancel_save()
    wait_for_save(qtbot, widget)
    widget.scale_spin.value = 2.0
    widget.save_to(tmp_path / "stale.ome.zarr")
    wait_for_save(qtbot, widget)
    assert isinstance(widget.last_save.job.result, NiivInputError)
    assert "other alpha, scale" in widget.status_label.value and "--restart" not in widget.status_label.value
    # what follows from the scale (shape, region, levels) is not listed, nor the command line's options
    assert "region" not in widget.status_label.value and "(--" not in widget.status_label.value


@pytest.mark.slow
def test_a_save_that_ends_before_its_follower_is_connected_is_still_seen_to_end(
    qtbot, make_napari_viewer, cremi, tiny_weights, tmp_path, monkeypatch
):
    """A save refused as it opens its store ends within milliseconds. Its follower's 'finished'
    was connected only after the follower had started, and a signal emitted by a worker thread
    with nothing connected is lost: once in a full test run the dock waited for that save forever
    (Save disabled, 'a save is running'). Here the GUI thread is held until the job has ended."""
    from napari_niiv._napari.activity import JobWorker
    from napari_niiv._napari.save_job import SaveJob

    jobs: list[SaveJob] = []
    start_job, start_worker = SaveJob.start, JobWorker.start

    def record(job: SaveJob) -> None:
        jobs.append(job)
        start_job(job)

    def slow_gui(worker: JobWorker) -> None:
        start_worker(worker)
        jobs[-1].join()
        time.sleep(0.5)  # the follower sees the end within its poll (0.1 s) and says so

    monkeypatch.setattr(SaveJob, "start", record)
    monkeypatch.setattr(JobWorker, "start", slow_gui)
    viewer = make_napari_viewer()
    viewer.add_image(cremi, name="cremi", scale=(40, 4, 4))
    widget = open_widget(viewer, tiny_weights)
    saver = widget.save_to(tmp_path / "out")
    assert saver is not None and widget.saver is saver, widget.status_label.value
    qtbot.waitUntil(lambda: widget.saver is None, timeout=30_000)
    assert isinstance(saver.job.result, WriteReport) and "saved 'cremi'" in widget.status_label.value
    assert widget.last_save is saver and widget.save_button.enabled


@pytest.mark.slow
def test_a_save_that_cannot_start_leaves_the_dock_ready_to_save_again(
    qtbot, make_napari_viewer, cremi, tiny_weights, tmp_path, monkeypatch
):
    """The dock keeps a save before starting it (89e954b): a start that raised (no thread could be
    made) left it 'saving' for good, Save disabled (review 11)."""
    from napari_niiv._napari.save_job import SaveJob

    def no_thread(job: SaveJob) -> None:
        raise RuntimeError("can't start new thread")

    viewer = make_napari_viewer()
    viewer.add_image(cremi, name="cremi", scale=(40, 4, 4))
    widget = open_widget(viewer, tiny_weights)
    with monkeypatch.context() as m:
        m.setattr(SaveJob, "start", no_thread)
        assert widget.save_to(tmp_path / "out") is None
    assert widget.saver is None and widget.save_button.enabled
    assert "could not start (RuntimeError: can't start new thread)" in widget.status_label.value
    again = widget.save_to(tmp_path / "out")  # nothing was written: the same path saves
    assert again is not None, widget.status_label.value
    wait_for_save(qtbot, widget)
    assert isinstance(again.job.result, WriteReport), widget.status_label.value


@pytest.mark.slow
def test_a_save_never_goes_into_the_store_of_a_layer_another_reader_opened(
    make_napari_viewer, cremi, tiny_weights, tmp_path
):
    """The input's store was known only for layers the niiv reader opened: a layer napari's own
    reader opened from s.zarr/0 was saved into s.zarr (found by the lazy-layer audit). Its file is
    also what a resumed save checks for edits (size and date), as the CLI does. A link to nothing
    at the output is refused in the dock's words."""
    from napari_niiv.data import fit_normalisation
    from napari_niiv.inference.export import input_signature
    from napari_niiv.inference.reconstructor import BlockReconstruction

    store = tmp_path / "s.zarr"
    zarr.open_group(str(store), mode="w").create_array("0", data=cremi, chunks=(4, 24, 24))
    before = sorted(p.name for p in store.iterdir())
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(store / "0"), plugin="napari")
    layer.scale = (40, 4, 4)
    widget = open_widget(viewer, tiny_weights)
    widget.volume_choice.value = layer
    for inside in (store / "iso.ome.zarr", store / "0" / "iso.ome.zarr"):
        assert widget.save_to(inside) is None
        assert "choose an output path outside it" in widget.status_label.value, widget.status_label.value
    assert sorted(p.name for p in store.iterdir()) == before and widget.saver is None
    # a link to nothing at the output: refused in the dock's words, not the CLI's "--overwrite"
    (tmp_path / "dangling.ome.zarr").symlink_to(tmp_path / "nowhere")
    assert widget.save_to(tmp_path / "dangling.ome.zarr") is None
    assert "already exists; niiv never replaces a store" in widget.status_label.value
    assert "--overwrite" not in widget.status_label.value
    # the job carries the file: its size and date are part of the resume fingerprint
    norm, model = fit_normalisation(cremi), random_model(TINY)
    job = BlockReconstruction(cremi, norm, model, widget.settings(), None, origin=str(store))  # type: ignore[arg-type]
    assert {"bytes", "mtime_ns"} <= set(input_signature(job))


@pytest.mark.slow
def test_the_window_keeps_responding_during_a_background_save(qtbot, make_napari_viewer, cremi, tiny_weights, tmp_path):
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    viewer.add_image(cremi, name="cremi", scale=(40, 4, 4))
    widget = open_widget(viewer, tiny_weights)
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    started = time.perf_counter()
    saver = widget.save_to(tmp_path / "r.ome.zarr")
    assert saver is not None and saver.job.running, "the save did not run in the background"
    assert saver.job.progress().done == 0, "save_to returned only after writing"
    assert not widget.save_button.enabled
    seen = []
    qtbot.waitUntil(lambda: seen.append(widget.activity_bar.label.text()) or widget.saver is None, timeout=180_000)
    ended = time.perf_counter()
    timer.stop()
    assert isinstance(saver.job.result, WriteReport), widget.status_label.value
    during = [t for t in ticks if started <= t <= ended]
    gaps = np.diff([started, *during, ended])
    assert len(during) >= 20, f"the timer fired {len(during)} times in a {ended - started:.1f} s save"
    assert gaps.max() < 0.5 * (ended - started), "the GUI thread was blocked for most of the save"
    assert saver.yields >= 1, "no progress reached the GUI thread through the napari worker"
    assert any(text.startswith("saving 'cremi'") and "ETA" in text for text in seen), seen[-5:]
    assert widget.save_button.enabled


@pytest.mark.slow
def test_file_save_of_a_whole_volume_layer_reports_progress_only_on_the_gui_thread(
    qtbot, make_napari_viewer, cremi, tiny_weights, tmp_path
):
    """napari's File > Save writes on the GUI thread, while the store computes its columns on a
    pool of threads that also report progress: only the GUI thread may set the status bar (Qt
    widgets must not be touched from other threads)."""
    viewer = make_napari_viewer()
    viewer.add_image(cremi, name="cremi", scale=(40, 4, 4))
    widget = open_widget(viewer, tiny_weights)
    widget.reconstruct_button.native.click()
    qtbot.waitUntil(lambda: widget.preparing == 0, timeout=60_000)
    iso = viewer.layers["cremi isotropic (niiv)"]
    seen: list[tuple[threading.Thread, str]] = []
    viewer.events.status.connect(lambda e: seen.append((threading.current_thread(), str(e.value))))
    out = tmp_path / "iso.ome.zarr"
    assert iso.save(str(out), plugin="napari-niiv") == [str(out)]
    assert all(t is threading.main_thread() for t, _ in seen), {t.name for t, _ in seen}
    assert any("writing 'cremi isotropic (niiv)', 100 %" in text for _, text in seen), seen
    np.testing.assert_array_equal(levels(out)[0].shape, iso.data[0].shape)
