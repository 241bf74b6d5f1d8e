"""Evaluation scores a volume on its own intensity range (uint8 keeps the paper's /255), and the
Python API asks for alpha where the CLI does."""

from __future__ import annotations

import numpy as np
import pytest

from napari_niiv.errors import NiivInputError
from napari_niiv.inference.reconstructor import reconstruct_volume
from napari_niiv.training.evaluate import evaluate, intensity_range, interpolation
from tests.conftest import random_model


def test_a_12_bit_volume_in_uint16_is_scored_on_its_own_range(medulla) -> None:
    cube = medulla[:32, :32, :32]
    twelve_bit = cube.astype(np.uint16) * 16  # 0..4080 in a uint16 container
    methods = {"bilinear": interpolation("bilinear")}
    (as_uint16,) = evaluate([twelve_bit], 8.0, methods)
    (as_float,) = evaluate([twelve_bit.astype(np.float32)], 8.0, methods)
    assert as_uint16.cf_psnr == pytest.approx(as_float.cf_psnr, abs=1e-6)
    assert as_uint16.ssim < 0.99  # scaled by 65535 every method scored SSIM 1.000
    assert intensity_range(cube) == (0.0, 255.0)  # the paper's /255 stays for uint8
    with pytest.raises(NiivInputError, match="constant"):
        intensity_range(np.zeros((4, 4, 4), np.uint16))


def test_reconstruct_volume_asks_for_alpha_on_a_plain_array(medulla) -> None:
    with pytest.raises(NiivInputError, match="alpha"):
        reconstruct_volume(random_model(), medulla[:4, :20, :20])
