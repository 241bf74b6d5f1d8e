"""The dock's psf width: a light-microscopy user knows the axial blur of the microscope, and the
dock offered psf only at one section spacing (the command line takes psf:FWHM). The width is shown
with psf only, reaches the inference settings and the fine-tuning run, and a reopened dock keeps it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.slow  # a napari viewer each

from tests.conftest import open_dock  # noqa: E402


def shown(control) -> bool:
    """Not hidden: on screen once Qt has laid the dock out (``visible`` waits for that)."""
    return not control.native.isHidden()


def test_the_psf_width_is_offered_with_psf_and_reaches_the_settings_and_fine_tuning(
    qtbot, make_napari_viewer, tiny_user_weights
):
    from qtpy import sip

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((8, 48, 48), np.uint16), name="confocal", scale=(1.04, 0.26, 0.26), units="um")
    widget = open_dock(viewer)
    assert widget.sections_choice.value == "psf"  # niiv-lm, preselected for light microscopy, learned psf
    assert shown(widget.fwhm_spin) and widget.fwhm_spin.value == 0
    assert widget.settings().degradation == "psf"  # 0: one section spacing, as before

    widget.fwhm_spin.value = 6.5
    assert widget.settings().degradation == "psf:6.5"
    assert widget.settings().sections.thickness(4.0) == 6.5
    assert widget.training.request().degradation == "psf:6.5"

    widget.sections_choice.value = "thick"
    assert not shown(widget.fwhm_spin) and widget.settings().degradation == "thick"
    widget.sections_choice.value = "psf"
    assert shown(widget.fwhm_spin) and widget.settings().degradation == "psf:6.5"

    widget.parent().title.close_button.click()
    qtbot.waitUntil(lambda: sip.isdeleted(widget), timeout=10_000)
    again = open_dock(viewer)
    assert (again.sections_choice.value, again.fwhm_spin.value) == ("psf", 6.5) and shown(again.fwhm_spin)
    assert again.settings().degradation == "psf:6.5"


def test_em_layers_do_not_show_the_psf_width(make_napari_viewer, cremi64):
    viewer = make_napari_viewer()
    viewer.add_image(cremi64, name="em", scale=(40, 4, 4), units="nm")
    widget = open_dock(viewer)
    assert widget.sections_choice.value == "thick" and not shown(widget.fwhm_spin)


def test_the_weights_note_says_when_the_sections_or_width_are_not_what_the_weights_learned(make_napari_viewer):
    """niiv-lm is not told the sections: a width typed in the box changed nothing it drew, and the
    dock never said so, where the command line notes it (review 11)."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 48, 48), np.uint16), name="confocal", scale=(1.04, 0.26, 0.26), units="um")
    widget = open_dock(viewer)
    assert widget.weights_choice.value == "niiv-lm" and widget.alpha_spin.value == 4.0
    assert "learned" not in widget.weights_note.value  # psf one spacing wide: what it learned
    widget.fwhm_spin.value = 8.0
    assert "niiv-lm learned a psf blur of FWHM 4 xy voxels (one section spacing) at alpha 4, used here on one of 8" in (
        widget.weights_note.value
    )
    widget.sections_choice.value = "thick"
    assert "niiv-lm learned psf sections, never thick ones" in widget.weights_note.value
    widget.sections_choice.value = "psf"
    widget.fwhm_spin.value = 0.0
    assert "learned" not in widget.weights_note.value


def test_weights_picked_after_the_preselection_get_a_note_for_their_own_sections(make_napari_viewer):
    """Sections follow the weights until picked: the note must be written for the new sections, not
    for those the previous weights had (niiv-em shown with psf's 'never psf' warning)."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 48, 48), np.uint16), name="confocal", scale=(1.04, 0.26, 0.26), units="um")
    widget = open_dock(viewer)
    widget.weights_choice.value = "niiv-em"
    assert widget.sections_choice.value == "thick" and "never" not in widget.weights_note.value
