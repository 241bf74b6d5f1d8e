import numpy as np
import pytest

from napari_niiv.errors import NiivInputError
from napari_niiv.training.evaluate import cube_origins, cut_cubes, simulate


def test_cubes_cover_the_region_first_at_zero_last_flush() -> None:
    assert cube_origins(128, 128) == [0]
    assert cube_origins(250, 128) == [0, 122]
    assert cube_origins(300, 100) == [0, 100, 200]
    cubes = cut_cubes(np.zeros((128, 250, 250)), 128)
    assert len(cubes) == 4 and all(c.shape == (128, 128, 128) for c in cubes)
    with pytest.raises(NiivInputError, match="smaller than --cube"):
        cube_origins(100, 128)


def test_simulate_pools_z_and_trims_ground_truth() -> None:
    iso = np.random.default_rng(0).random((20, 4, 4)).astype(np.float32)
    low, gt = simulate(iso, 8.0)
    assert low.shape == (2, 4, 4) and gt.shape == (16, 4, 4)
    np.testing.assert_allclose(low[1], iso[8:16].mean(0), atol=1e-6)
