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
