"""Weights preselected from what is known of a volume, with the reason."""

import numpy as np

from napari_niiv.inference.suggestion import EM_WEIGHTS, LM_WEIGHTS, suggest_weights


def test_voxel_size_decides_when_its_unit_is_known() -> None:
    em = suggest_weights((40.0, 4.0, 4.0), "nanometer", np.uint16)  # 16-bit EM: the size wins
    assert em.weights == EM_WEIGHTS and "4 nm" in em.reason and "electron" in em.reason
    lm = suggest_weights((0.29, 0.26, 0.26), "µm", np.uint8)
    assert lm.weights == LM_WEIGHTS and "260 nm" in lm.reason and "light" in lm.reason
    assert suggest_weights((0.05, 0.008, 0.008), "micrometer", np.float32).weights == EM_WEIGHTS


def test_pixel_type_decides_without_a_physical_size() -> None:
    assert suggest_weights((10.0, 1.0, 1.0), None, np.uint8).weights == EM_WEIGHTS
    lm = suggest_weights((4.0, 1.0, 1.0), None, np.uint16)
    assert lm.weights == LM_WEIGHTS and "no physical voxel size" in lm.reason and "16-bit" in lm.reason
    between = suggest_weights((300.0, 60.0, 60.0), "nm", np.uint16)  # neither EM nor LM by size
    assert between.weights == LM_WEIGHTS and "between" in between.reason
    assert "default" in suggest_weights((1.0, 1.0, 1.0), "pixel", np.float32).reason
