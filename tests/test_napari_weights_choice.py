"""The dock preselects weights by what it knows of the layer, says why, and keeps what the user
picks (real napari viewer under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_niiv.inference.weights import available_weights

pytest.importorskip("napari")
pytestmark = pytest.mark.slow  # a napari viewer


def test_weights_follow_the_layer_until_the_user_picks(make_napari_viewer) -> None:
    assert {"niiv-em", "niiv-lm"} <= set(available_weights())
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-niiv", "niiv isotropic view")
    lm = viewer.add_image(np.zeros((8, 32, 32), np.uint16), name="confocal", scale=(0.29, 0.26, 0.26), units="um")
    widget.volume_choice.value = lm
    assert widget.weights_choice.value == "niiv-lm"
    assert "260 nm" in widget.weights_note.value and "light microscopy" in widget.weights_note.value
    em = viewer.add_image(np.zeros((8, 32, 32), np.uint8), name="tem", scale=(40, 4, 4))  # no unit: 8-bit
    widget.volume_choice.value = em
    assert widget.weights_choice.value == "niiv-em" and "8-bit" in widget.weights_note.value
    # the user's pick stays for that volume (the note names what would suit it); another volume
    # gets its own preselection, not the pick made for the first
    widget.weights_choice.value = "niiv-v1-fibsem-a8"
    assert "your choice" in widget.weights_note.value and "niiv-em suits 'tem'" in widget.weights_note.value  # at once
    widget.volume_choice.value = lm
    assert widget.weights_choice.value == "niiv-lm" and "light microscopy" in widget.weights_note.value
    widget.volume_choice.value = em
    assert widget.weights_choice.value == "niiv-v1-fibsem-a8"
    assert "your choice" in widget.weights_note.value and "niiv-em suits 'tem'" in widget.weights_note.value
    widget.weights_choice.value = "niiv-fast"  # picked again: the new pick is kept
    widget.volume_choice.value = lm
    widget.volume_choice.value = em
    assert widget.weights_choice.value == "niiv-fast"


def test_sections_follow_the_weights_until_the_user_picks_and_reach_the_settings(make_napari_viewer) -> None:
    """The sections control (how the data's sections were made) preselects what the weights
    learned (niiv-lm: psf), keeps the user's pick when the weights change, and is what the
    reconstruction's settings carry (a model with an acquisition embedding is told it)."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-niiv", "niiv isotropic view")
    lm = viewer.add_image(np.zeros((8, 32, 32), np.uint16), name="confocal", scale=(0.29, 0.26, 0.26), units="um")
    widget.volume_choice.value = lm
    assert widget.weights_choice.value == "niiv-lm" and widget.sections_choice.value == "psf"
    em = viewer.add_image(np.zeros((8, 32, 32), np.uint8), name="tem", scale=(40, 4, 4))
    widget.volume_choice.value = em
    assert widget.weights_choice.value == "niiv-em" and widget.sections_choice.value == "thick"
    assert widget.settings().degradation == "thick"
    widget.sections_choice.value = "thin"
    widget.weights_choice.value = "niiv-lm"
    assert widget.sections_choice.value == "thin" and widget.settings().degradation == "thin"
