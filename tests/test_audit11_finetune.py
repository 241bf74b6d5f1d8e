"""The dock's fine-tuning panel driven as an EM and a light-microscopy user would (audit 11):
boxes the run leaves out, and a CSV export that fails part-way."""

from __future__ import annotations

import numpy as np
import pytest

from napari_niiv.data import open_volume
from tests.conftest import data_path, open_dock

pytest.importorskip("napari")
pytestmark = pytest.mark.slow  # a napari viewer each


@pytest.fixture(scope="module")
def em() -> np.ndarray:
    """Real serial-section TEM, alpha 10: (8, 64, 64) uint8."""
    return np.asarray(open_volume(data_path("anisotropic_em", "cremi_a.tif")).data[:8, :64, :64])


def boxes(viewer, *sides_px: int):
    """A Shapes layer of squares from the origin, ``sides_px`` data px of the (40, 4, 4) nm layer."""
    squares = [np.array([[0, 0], [0, s], [s, s], [s, 0]], float) * 4 for s in sides_px]
    return viewer.add_shapes(squares, shape_type="rectangle", name="boxes")


def test_boxes_the_run_leaves_out_are_named_with_why(qtbot, make_napari_viewer, em, tiny_user_weights):
    """Of two boxes drawn (one narrower than the 64 px training crop) the status said 'training on
    1 region(s)', without a word on the other: the user could not tell their box did nothing."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(em, name="em", scale=(40, 4, 4), units="nm")
    widget = open_dock(viewer, "user/tiny")
    panel = widget.training
    panel.region_choice.value = "boxes of a Shapes layer"
    panel.shapes_choice.value = boxes(viewer, 63, 29)  # box_region: 64 and 30 px across
    panel.steps_spin.value, panel.minutes_spin.value, panel.name_edit.value = 10, 0, "two-boxes"
    panel.start_button.native.click()
    assert panel.job is not None, panel.status_label.value
    assert panel.job.split.regions == [(slice(0, 8), slice(0, 64), slice(0, 64))]
    assert panel.status_label.value.startswith(
        "training on 1 region(s) of the 2 drawn (left out: 1 narrower than the 64 px training crop); scoring"
    )
    panel.stop_button.native.click()
    qtbot.waitUntil(lambda: panel.job is None, timeout=120_000)


def test_a_csv_export_failing_part_way_keeps_the_file_it_was_to_replace(make_napari_viewer, tmp_path):
    """The CSV was written in place: a write failing part-way (a full disk) left half a CSV under the
    name, and the file the user chose to replace was lost."""
    viewer = make_napari_viewer()
    panel = open_dock(viewer).training
    for step in range(1, 6):
        panel.plot.add_loss(step, 0.1 / step)
    rows = panel.plot.rows()

    class Failing:
        def __iter__(self):
            yield rows[0]
            raise OSError(28, "No space left on device")

    panel.plot.rows = Failing
    path = tmp_path / "loss.csv"
    path.write_text("the user's own file\n")
    assert panel.export_csv(path) is None
    assert "could not write" in panel.status_label.value and "No space left" in panel.status_label.value
    assert path.read_text() == "the user's own file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.csv"]  # no temporary left either

    folder = tmp_path / "a-folder.csv"
    folder.mkdir()
    assert panel.export_csv(folder) is None and "it is a folder" in panel.status_label.value


def test_a_psf_wider_than_the_training_crop_is_refused_at_start(qtbot, make_napari_viewer, tiny_user_weights):
    """psf FWHM 65 on a confocal stack started the run, scored the start weights, then failed on its
    thread advising 'a larger crop or cube', which the panel has no control for."""
    nuclei = np.asarray(open_volume(data_path("lm", "cells3d_nuclei.tif")).data[::4, :96, :96])
    viewer = make_napari_viewer(show=True)
    viewer.add_image(nuclei, name="nuclei", scale=(1.16, 0.26, 0.26), units="um")
    widget = open_dock(viewer)
    panel = widget.training
    assert widget.sections_choice.value == "psf"
    panel.steps_spin.value, panel.minutes_spin.value, panel.name_edit.value = 10, 0, "wide-psf"
    widget.fwhm_spin.value = 65
    panel.start_button.native.click()
    assert panel.job is None
    assert panel.status_label.value.startswith(
        "psf FWHM 65 xy px is wider than the 64 px over which fine-tuning on 'nuclei' simulates its sections"
    )
    assert "at most 64" in panel.status_label.value
    assert sorted(p.name for p in tiny_user_weights.iterdir()) == ["tiny.safetensors"]  # nothing written

    widget.fwhm_spin.value = 64  # as wide as the crop: allowed
    panel.start_button.native.click()
    assert panel.job is not None, panel.status_label.value
    panel.stop_button.native.click()
    qtbot.waitUntil(lambda: panel.job is None, timeout=120_000)


def test_the_offered_name_follows_an_alpha_changed_during_the_run(qtbot, make_napari_viewer, em, tiny_user_weights):
    """The name offered is '<layer>-a<alpha>', but one changed while a run went on was not followed
    once it ended: the box kept 'em-a10', the run's finished weights, and Start was refused."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(em, name="em", scale=(40, 4, 4), units="nm")
    widget = open_dock(viewer, "user/tiny")
    panel = widget.training
    panel.steps_spin.value, panel.minutes_spin.value = 10, 0
    assert panel.name_edit.value == "em-a10"
    panel.start_button.native.click()
    assert panel.job is not None, panel.status_label.value
    widget.alpha_spin.value = 5
    assert panel.name_edit.value == "em-a10"  # the run's own name while it runs
    qtbot.waitUntil(lambda: panel.job is None, timeout=120_000)
    assert "done at step 10: saved 'user/em-a10'" in panel.status_label.value
    assert panel.name_edit.value == "em-a5" and panel.start_button.enabled

    typed = "mine"  # a name typed is kept
    panel.name_edit.value = typed
    panel.start_button.native.click()
    assert panel.job is not None, panel.status_label.value
    widget.alpha_spin.value = 6
    panel.stop_button.native.click()
    qtbot.waitUntil(lambda: panel.job is None, timeout=120_000)
    assert panel.name_edit.value == typed


def test_a_users_own_md_in_the_weights_folder_is_never_replaced_by_a_card(tmp_path) -> None:
    """Only the weights and their checkpoint were checked: a user's own NAME.md in the weights
    folder, with no weights beside it, was replaced by the run's card (reported by the audit)."""
    from napari_niiv.errors import NiivInputError
    from napari_niiv.training.finetune import check_new_weights

    (tmp_path / "notes.md").write_text("my own notes")
    with pytest.raises(NiivInputError, match=r"already holds 'notes\.md', with no weights beside it"):
        check_new_weights(tmp_path / "notes.safetensors", resume=False)
    assert (tmp_path / "notes.md").read_text() == "my own notes"
    check_new_weights(tmp_path / "other.safetensors", resume=False)  # another name starts


def test_a_typed_name_made_file_safe_is_shown_as_saved(qtbot, make_napari_viewer, em, tiny_user_weights):
    """'my run/é*?<>' was saved as user/my-run while the box kept the typed text (the audit)."""
    from napari_niiv.training.finetune import weights_name

    viewer = make_napari_viewer(show=True)
    viewer.add_image(em, name="em", scale=(40, 4, 4), units="nm")
    widget = open_dock(viewer, "user/tiny")
    panel = widget.training
    panel.steps_spin.value, panel.minutes_spin.value = 10, 0
    panel.name_edit.value = "my run/é*?<>"
    panel.start_button.native.click()
    assert panel.job is not None, panel.status_label.value
    assert panel.name_edit.value == weights_name("my run/é*?<>") == panel.job.out.stem
    qtbot.waitUntil(lambda: panel.job is None, timeout=120_000)
    assert f"saved 'user/{panel.name_edit.value}'" in panel.status_label.value
