"""The plugin's own layer removals go one at a time with a repaint between: napari 0.9 on software
OpenGL (Mesa llvmpipe, as under Xvfb here and on machines without a GPU) crashed at the next
repaint when two layers were removed in one turn of the event loop, e.g. a whole-volume layer the
user removed and its confidence map, which the plugin removed from within napari's removal."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("napari")
from tests.conftest import run_napari_child

pytestmark = pytest.mark.slow  # a napari viewer


def test_remove_layers_removes_the_first_now_and_the_rest_one_gap_apart(qtbot, make_napari_viewer) -> None:
    from napari_niiv._napari.layer_view import REMOVAL_GAP_MS, remove_layers

    viewer = make_napari_viewer()
    keep, a, b, c = (viewer.add_image(np.zeros((4, 8, 8), np.float32), name=n) for n in "kabc")
    removed_at: dict[str, float] = {}
    viewer.layers.events.removed.connect(lambda e: removed_at.setdefault(e.value.name, time.perf_counter()))
    remove_layers(viewer, [a, b])
    remove_layers(viewer, [c])  # waits behind the first call's removals, never beside them
    assert a not in viewer.layers and b in viewer.layers and c in viewer.layers
    qtbot.waitUntil(lambda: c not in viewer.layers, timeout=5000)
    assert list(viewer.layers) == [keep]
    gaps = np.diff([removed_at[n] for n in "abc"])
    assert (gaps >= 0.9 * REMOVAL_GAP_MS / 1000).all(), gaps
    # from within napari's removal of another layer (now=False), none goes in the same turn
    d = viewer.add_image(np.zeros((4, 8, 8), np.float32), name="d")
    later = []
    viewer.layers.events.removed.connect(lambda e: e.value is keep and later.append(d in viewer.layers))
    viewer.layers.events.removed.connect(lambda e: e.value is keep and remove_layers(viewer, [d], now=False))
    viewer.layers.remove(keep)
    assert later == [True] and d in viewer.layers
    qtbot.waitUntil(lambda: d not in viewer.layers, timeout=5000)


CHILD = """
    viewer = napari.Viewer(show=True)
    data = np.load(sys.argv[1])
    viewer.add_image(data, name="em", scale=(40, 4, 4), units="nm")
    _, widget = viewer.window.add_plugin_dock_widget("napari-niiv", "niiv isotropic view")
    widget.weights_choice.value = "niiv-fast"
    widget.confidence_check.value = True
    widget.reconstruct_button.changed.emit(True)
    wait(lambda: widget.preparing == 0)
    viewer.dims.order = (1, 0, 2)
    viewer.reset_view()
    wait(lambda: not widget.activities())
    iso = next(layer for layer in viewer.layers if "niiv" in (layer.metadata or {}))
    viewer.layers.remove(iso)
    wait(lambda: [layer.name for layer in viewer.layers] == ["em"], timeout=10)
    window = viewer.window._qt_window
    window.resize(window.width() - 200, window.height() - 50)  # a repaint
    t = time.time()
    while time.time() - t < 0.5:
        QApplication.processEvents()
    print("painted")
    viewer.close()
    """


def test_removing_a_whole_volume_layer_with_its_confidence_map_does_not_crash_napari(tmp_path, cremi64) -> None:
    """In a child process: a segmentation fault would end the test run. It crashed every time here."""
    np.save(tmp_path / "em.npy", cremi64)
    env = {"NIIV_WEIGHTS_DIR": str(tmp_path / "no-user-weights")}
    run = run_napari_child(tmp_path, CHILD, str(tmp_path / "em.npy"), env=env)
    assert run.returncode == 0 and "painted" in run.stdout, (run.returncode, run.stdout[-500:], run.stderr[-2000:])
