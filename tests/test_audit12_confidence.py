"""Audit 12, the confidence map as a user meets it: `niiv reconstruct --confidence` with OUT inside
the map's path, and the live view's map after a setting changes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_niiv.data.degrade import pool_axis
from tests.conftest import write_tif

ALPHA = 4.0


@pytest.fixture(scope="module")
def volume(medulla) -> np.ndarray:
    """Real FIB-SEM pooled by 4 along z: (4, 24, 24) uint8."""
    return pool_axis(medulla[:16, :24, :24].astype(np.float32), ALPHA, 0).astype(np.uint8)


@pytest.mark.parametrize(("out_name", "map_name"), [("maps.zarr/iso.tif", "maps.zarr"), ("m.tif/iso.zarr", "m.tif")])
def test_a_map_path_that_holds_out_is_refused_before_any_work(
    tmp_path, capsys, volume, tiny_user_weights, out_name, map_name
):
    """`niiv reconstruct IN maps.zarr/iso.tif --confidence maps.zarr` wrote OUT (making the folder
    maps.zarr), then refused the map after the whole reconstruction: 'maps.zarr already exists'.
    Refused first now, with nothing written."""
    from napari_niiv.cli import main

    src = tmp_path / "aniso.tif"
    write_tif(src, volume, imagej=True, resolution=(1.0, 1.0), metadata={"spacing": ALPHA, "unit": "um"})
    out, cmap = tmp_path / out_name, tmp_path / map_name
    weights = tiny_user_weights / "tiny.safetensors"
    argv = ["reconstruct", str(src), str(out), "--weights", str(weights), "--confidence", str(cmap)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--confidence {cmap}: OUT {out} lies inside it" in err and "->" not in err  # before the plan
    assert "Traceback" not in err
    assert not cmap.exists() and not out.exists()


def test_a_refused_map_path_is_named_as_the_map_not_as_the_output(tmp_path, capsys, volume, tiny_user_weights):
    """`--confidence IN` said 'IN: the output is the input IN', and an existing map 'm.tif already
    exists': which output, the user had to guess. The words now start with --confidence."""
    from napari_niiv.cli import main

    src = tmp_path / "aniso.tif"
    write_tif(src, volume, imagej=True, resolution=(1.0, 1.0), metadata={"spacing": ALPHA, "unit": "um"})
    weights = tiny_user_weights / "tiny.safetensors"
    existing = tmp_path / "m.tif"
    existing.write_bytes(b"the user's")
    under_file = tmp_path / "notes.txt" / "m.tif"
    under_file.parent.write_text("a file")
    cases = [
        (src, f"--confidence {src}: the output is the input"),
        (existing, f"--confidence {existing} already exists; choose another output path or pass --overwrite"),
        (under_file, f"--confidence {under_file}: cannot write {under_file}: {under_file.parent} is a file"),
    ]
    for cmap, words in cases:
        out = tmp_path / "iso.tif"
        argv = ["reconstruct", str(src), str(out), "--weights", str(weights), "--confidence", str(cmap)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
        assert not out.exists()
    assert existing.read_bytes() == b"the user's" and src.exists()


def _maps(viewer) -> list:
    return [layer for layer in viewer.layers if "niiv_confidence_of" in (layer.metadata or {})]


def _settled(qtbot, widget, stage: str = "confidence") -> None:
    def done() -> bool:
        view = widget.live_view
        return view is not None and not view.busy and bool(view.timings) and stage in view.timings[-1]

    qtbot.waitUntil(done, timeout=60_000)
    qtbot.wait(50)


def _live_with_map(qtbot, make_napari_viewer, cremi64) -> tuple:
    """The dock live on an xz view of ``cremi64`` with the confidence map on, both shown: (viewer,
    dock, map layer)."""
    pytest.importorskip("napari")
    from tests.conftest import open_dock

    viewer = make_napari_viewer()
    viewer.add_image(cremi64, name="cremi", scale=(40, 4, 4))
    widget = open_dock(viewer, "user/tiny")
    viewer.dims.order = (1, 0, 2)  # an xz view
    viewer.dims.set_point(1, 4 * 21)
    viewer.reset_view()
    widget.precision_choice.value = "fp32"
    widget.live_check.value = True
    widget.confidence_check.value = True
    _settled(qtbot, widget)
    (cmap,) = _maps(viewer)
    return viewer, widget, cmap


@pytest.mark.slow  # a napari viewer
def test_a_setting_changed_hides_the_old_map_until_the_new_one(qtbot, make_napari_viewer, cremi64, tiny_user_weights):
    """With the map on, a new alpha (or weights, sections, orientation) showed the new niiv image at
    once under the map of the old settings, for as long as niiv and the map took (seconds to
    minutes on a CPU): where the old reconstruction was unsure, drawn over the new one. It is
    hidden now until the new map replaces it, then shown on the live layer's grid; a map the user
    hid stays hidden."""
    viewer, widget, cmap = _live_with_map(qtbot, make_napari_viewer, cremi64)
    old = np.array(cmap.data)
    assert cmap.visible

    widget.alpha_spin.value = 5  # a new live view, same map layer
    assert widget.live_view.confidence_output is cmap and not cmap.visible  # the old alpha's map: hidden
    _settled(qtbot, widget)
    assert _maps(viewer) == [cmap] and cmap.visible  # the new map, shown
    assert not np.allclose(cmap.data, old)
    out = widget.live_view.output
    assert cmap.data.shape == out.data.shape
    np.testing.assert_allclose(cmap.scale, out.scale)
    np.testing.assert_allclose(cmap.translate, out.translate)

    # a fine-tuning preview's new weights: their view's map replaces the old weights' map
    live = widget.live_view
    state = {k: v * 1.05 if v.is_floating_point() else v for k, v in live.reconstructor.model.state_dict().items()}
    live.update_weights(state)
    assert not cmap.visible
    _settled(qtbot, widget)
    assert _maps(viewer) == [cmap] and cmap.visible

    cmap.visible = False  # the user hides it: it stays hidden through a new setting and its map
    widget.alpha_spin.value = 8
    _settled(qtbot, widget)
    assert _maps(viewer) == [cmap] and not cmap.visible


@pytest.mark.slow  # a napari viewer
def test_deleting_the_live_map_by_hand_says_it_comes_back_and_how_to_stop_it(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    """The live view's map deleted by hand (box ticked) came back silently at the next view, while
    the status line still said 'showing ... and its confidence map'. The status now says it comes
    back and how to stop it; it does come back, on the live layer's grid."""
    viewer, widget, cmap = _live_with_map(qtbot, make_napari_viewer, cremi64)
    viewer.layers.remove(cmap)
    status = str(widget.status_label.value)
    assert "confidence map layer deleted" in status and "untick it" in status
    assert widget.confidence_check.value  # the box is the user's
    viewer.dims.set_point(1, 4 * 25)  # the next view: its map comes back, on the live layer's grid
    _settled(qtbot, widget)
    (again,) = _maps(viewer)
    out = widget.live_view.output
    assert again is not cmap and again.visible and again.data.shape == out.data.shape
    np.testing.assert_allclose(again.translate, out.translate)
    widget.confidence_check.value = False  # the plugin's own removal: no such words
    qtbot.waitUntil(lambda: not _maps(viewer), timeout=5_000)
    assert "deleted" not in str(widget.status_label.value)


def test_the_map_pass_is_named_in_its_progress_bar(tmp_path, capsys, volume, tiny_user_weights):
    """A .zarr map's pass showed a second 'reconstructing' progress bar after OUT's, as if OUT were
    being computed again; it is named 'confidence map'."""
    from napari_niiv.cli import main

    src = tmp_path / "aniso.tif"
    write_tif(src, volume, imagej=True, resolution=(1.0, 1.0), metadata={"spacing": ALPHA, "unit": "um"})
    out, cmap = tmp_path / "iso.ome.zarr", tmp_path / "map.ome.zarr"
    weights = tiny_user_weights / "tiny.safetensors"
    argv = ["reconstruct", str(src), str(out), "--weights", str(weights), "--levels", "1", "--confidence", str(cmap)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.index("reconstructing:") < err.index(f"wrote {out}") < err.index("confidence map:")
    assert err.count("reconstructing:") == err[: err.index(f"wrote {out}")].count("reconstructing:")


def test_a_zarr_map_cut_short_says_once_what_to_do(tmp_path, capsys, volume, tiny_user_weights, monkeypatch):
    """Ctrl-C in a .zarr map's pass, after a chunk of it: the words said 'run the same command again'
    twice, one inside nested parentheses ('... is not (the chunks written so far are in M.partial:
    run the same command again to write only the missing ones (or pass --restart ...)): run the
    same command again to write only the map'). Once now, with where the map's chunks wait; the
    same command then writes only the map."""
    from napari_niiv import cli
    from napari_niiv.inference import export

    src = tmp_path / "aniso.tif"
    write_tif(src, volume, imagej=True, resolution=(1.0, 1.0), metadata={"spacing": ALPHA, "unit": "um"})
    out, cmap = tmp_path / "iso.ome.zarr", tmp_path / "map.ome.zarr"
    weights = tiny_user_weights / "tiny.safetensors"
    argv = ["reconstruct", str(src), str(out), "--weights", str(weights), "--levels", "1"]
    argv += ["--confidence", str(cmap)]
    real = export.write_isotropic

    def stopped_in_the_map(path, *args, on_progress, **kwargs):
        def progress(done: int, total: int) -> None:
            on_progress(done, total)
            if path == cmap and done > 0:
                raise KeyboardInterrupt  # Ctrl-C while the map is computed

        return real(path, *args, on_progress=progress, **kwargs)

    monkeypatch.setattr(export, "write_isotropic", stopped_in_the_map)
    assert cli.main(argv) == 130
    said = capsys.readouterr().err
    partial = tmp_path / "map.ome.zarr.partial"
    assert partial.is_dir() and out.is_dir() and not cmap.exists()
    line = next(x for x in said.splitlines() if "interrupted" in x)
    assert line.endswith(
        f"{out} is complete, the confidence map is not: run the same command again to write only the map; "
        f"its chunks written so far wait in {partial}"
    )
    assert line.count("run the same command again") == 1
    monkeypatch.setattr(export, "write_isotropic", real)
    assert cli.main(argv) == 0
    said = capsys.readouterr().err
    assert "writing only the confidence map" in said and cmap.is_dir() and not partial.exists()


@pytest.mark.slow  # a napari viewer
def test_ticking_the_map_again_over_a_whole_volume_layer_says_it_is_on(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    """With a whole-volume layer and no live view, unticking the map said 'confidence map off' and
    ticking it again said nothing: 'confidence map off' stayed beside the ticked box while the map
    layer came back."""
    pytest.importorskip("napari")
    from tests.conftest import open_dock

    viewer = make_napari_viewer()
    viewer.add_image(cremi64, name="cremi", scale=(40, 4, 4))
    widget = open_dock(viewer, "user/tiny")
    widget.precision_choice.value = "fp32"
    widget.reconstruct_button.native.click()
    qtbot.waitUntil(lambda: widget.preparing == 0, timeout=60_000)  # prepared on a thread
    widget.confidence_check.value = True
    qtbot.waitUntil(lambda: len(_maps(viewer)) == 1, timeout=10_000)
    widget.confidence_check.value = False
    qtbot.waitUntil(lambda: not _maps(viewer), timeout=5_000)
    assert widget.status_label.value == "confidence map off"
    widget.confidence_check.value = True
    qtbot.waitUntil(lambda: len(_maps(viewer)) == 1, timeout=10_000)
    assert str(widget.status_label.value).startswith("confidence map: on")


@pytest.mark.slow  # a napari viewer
def test_a_map_hidden_for_a_view_that_ended_comes_back_with_the_next_views_map(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    """A new alpha hides the old map until the new one; live unticked before it came, then ticked
    again: the next view took the plugin's hiding for the user's and kept the map hidden for good."""
    viewer, widget, cmap = _live_with_map(qtbot, make_napari_viewer, cremi64)
    widget.alpha_spin.value = 5
    assert not cmap.visible
    widget.live_check.value = False  # before the new map
    assert not cmap.visible and _maps(viewer) == [cmap]
    widget.live_check.value = True
    _settled(qtbot, widget)
    assert _maps(viewer) == [cmap] and cmap.visible
