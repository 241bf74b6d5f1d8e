"""The three axial forward models against hand-computed cases, and a mixed-alpha, mixed-degradation
training schedule on real data."""

import math

import dask.array as da
import numpy as np
import pytest
import torch

from napari_niiv.data import LateralPairSampler, Volume
from napari_niiv.data.degrade import THICK, Degradation, parse_degradations
from napari_niiv.data.pairs import parse_focus
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.weights import load_weights
from napari_niiv.model import NiivModel
from napari_niiv.training.evaluate import cut_cubes, evaluate, format_gains, interpolation, lateral_planes, simulate
from napari_niiv.training.train import TrainSettings, train


def test_thick_averages_the_whole_section() -> None:
    x = np.arange(8, dtype=np.float32)
    np.testing.assert_allclose(THICK.apply(x, 4.0), [1.5, 5.5])  # (0+1+2+3)/4, (4+5+6+7)/4


def test_thin_keeps_one_voxel_at_each_section_centre() -> None:
    x = np.arange(9, dtype=np.float32) ** 2
    # alpha 3: centres at 1.5, 4.5, 7.5 -> exactly voxels 1, 4, 7
    np.testing.assert_allclose(Degradation("thin").apply(x, 3.0), [1.0, 16.0, 49.0])
    # alpha 8: centre 4.0 lies on the edge of voxels 3 and 4: a one-voxel box covers half of each
    y = np.arange(16, dtype=np.float32)
    np.testing.assert_allclose(Degradation("thin").apply(y, 8.0), [3.5, 11.5])


def test_psf_is_a_pixel_integrated_gaussian_at_the_section_centre() -> None:
    m = Degradation("psf", 2.0).matrix(8, 4.0)
    sigma = 2.0 / (2 * math.sqrt(2 * math.log(2)))

    def phi(t: float) -> float:
        return 0.5 * (1 + math.erf(t / (sigma * math.sqrt(2))))

    # Section 1 centred at 6.0: voxel 5 covers [5, 6), voxel 7 [7, 8); the kernel's part above 8 is cut off
    raw = [phi(j + 1 - 6.0) - phi(j - 6.0) for j in range(8)]
    np.testing.assert_allclose(m[1], np.array(raw) / sum(raw), atol=1e-6)
    assert m[1, 5] == pytest.approx(m[1, 6]) and m[1, 5] > 0.38  # symmetric about the centre
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
    # default FWHM: one section spacing; a wider PSF spreads more weight off the centre
    assert Degradation("psf").matrix(16, 4.0)[1, 6] < m[1, 5]


def test_degradations_preserve_a_constant_and_refuse_nonsense() -> None:
    for d in parse_degradations("thick,thin,psf,psf:3"):
        np.testing.assert_allclose(d.apply(np.full((40, 3), 7.0), 5.5), 7.0, atol=1e-5)
    for bad in ("box", "thin:2", "psf:0", "psf:nan", "psf:x", "thick,thick", ""):
        with pytest.raises(NiivInputError):
            parse_degradations(bad)
    assert str(Degradation.parse("psf:2.5")) == "psf:2.5"


def test_section_thickness_each_degradation_tells_a_model() -> None:
    """What an acquisition embedding is told: thick sections span their spacing, thin ones one
    voxel, a PSF its FWHM (default: one spacing)."""
    assert THICK.thickness(6.5) == 6.5
    assert Degradation("thin").thickness(6.5) == 1.0
    assert Degradation("psf", 3.0).thickness(6.5) == 3.0 and Degradation("psf").thickness(6.5) == 6.5


def test_evaluation_uses_the_degradation_and_scores_lateral_planes(medulla) -> None:
    iso = medulla[:32, :40, :40].astype(np.float32) / 255
    low_thick, gt = simulate(iso, 8.0)
    low_thin, _ = simulate(iso, 8.0, Degradation("thin"))
    np.testing.assert_allclose(low_thin[1], 0.5 * (iso[11] + iso[12]), atol=1e-6)
    assert not np.allclose(low_thick, low_thin) and gt.shape == (32, 40, 40)
    planes = lateral_planes(iso)
    assert planes.shape == (40, 32, 40) and np.array_equal(planes[:, 5], iso[5])
    blocks = cut_cubes(planes, (32, 32, 32))
    assert len(blocks) == 4 and blocks[0].shape == (32, 32, 32)
    scores = evaluate(
        [iso], 4.0, {m: interpolation(m) for m in ("bilinear", "bicubic")}, degradation=Degradation("thin")
    )
    assert [s.degradation for s in scores] == ["thin", "thin"] and scores[0].alpha == 4.0
    assert "| thin | 4 |" not in format_gains(scores)  # no learned method: no rows


def test_mixed_sampler_draws_alpha_and_degradation_per_batch(medulla) -> None:
    vol = Volume(da.from_array(medulla))
    s = LateralPairSampler([vol], (2.0, 12.0), 48, 256, degradations=parse_degradations("thick,thin"))
    batches = [s.batch(0, step, 2) for step in range(40)]
    alphas = [b.alpha for b in batches]
    assert 2.0 <= min(alphas) < 4.0 and 10.0 < max(alphas) <= 12.0
    assert any(a != round(a) for a in alphas)  # fractional alpha
    assert {str(b.degradation) for b in batches} == {"thick", "thin"}
    for b in batches:
        assert b.inputs.shape[2] == math.floor(48 / b.alpha + 1e-9)
        assert float(b.coords[..., 0].max()) <= b.inputs.shape[2]  # queries inside the sections
    again = s.batch(0, 7, 2)  # a pure function of (seed, step)
    assert again.alpha == batches[7].alpha and torch.equal(again.inputs, batches[7].inputs)
    # a single alpha and degradation draws nothing extra: the batches older runs saw
    single = LateralPairSampler([vol], 4.0, 48, 256)
    assert single.batch(0, 3, 2).alpha == 4.0
    with pytest.raises(NiivInputError, match="crop 16 is too small for alpha 12"):
        LateralPairSampler([vol], (2.0, 12.0), 16, 256)


def test_focus_sends_its_fraction_of_batches_to_the_weak_cases(medulla) -> None:
    vol = Volume(da.from_array(medulla))
    focus = parse_focus("thick@10-12, thin@2-3.5")
    assert focus == ((THICK, 10.0, 12.0), (Degradation("thin"), 2.0, 3.5))
    kinds = parse_degradations("thick,thin")
    s = LateralPairSampler([vol], (2.0, 12.0), 48, 64, degradations=kinds, focus=focus, focus_fraction=0.5)
    draws = [s.draw(np.random.default_rng([0, step])) for step in range(2000)]
    hits = [(str(d), a) for a, d in draws if (d == THICK and a >= 10.0) or (str(d) == "thin" and a <= 3.5)]
    # half the batches are focused; a uniform draw lands in those ranges with p = (2/10 + 1.5/10) / 2
    expected = 0.5 + 0.5 * (0.2 + 0.15) / 2
    assert abs(len(hits) / len(draws) - expected) < 0.04, len(hits) / len(draws)
    assert {d for d, _ in hits} == {"thick", "thin"}
    assert all(2.0 <= a <= 12.0 for a, _ in draws)
    # no focus fraction: exactly the draws of a run without a focus (older runs resume unchanged)
    plain = LateralPairSampler([vol], (2.0, 12.0), 48, 64, degradations=kinds)
    off = LateralPairSampler([vol], (2.0, 12.0), 48, 64, degradations=kinds, focus=focus, focus_fraction=0.0)
    for step in range(20):
        assert off.draw(np.random.default_rng([0, step])) == plain.draw(np.random.default_rng([0, step]))
    for bad, message in (
        ("thick:10-12", "not DEGRADATION@LO-HI"),
        ("thick@12-10", "runs backwards"),
        ("thick@ten-12", "not DEGRADATION@LO-HI"),
    ):
        with pytest.raises(NiivInputError, match=message):
            parse_focus(bad)
    with pytest.raises(NiivInputError, match="outside the run's degradations"):
        LateralPairSampler([vol], (2.0, 12.0), 48, 64, degradations=(THICK,), focus=focus, focus_fraction=0.5)
    with pytest.raises(NiivInputError, match="outside the run's degradations"):
        LateralPairSampler([vol], (2.0, 8.0), 48, 64, degradations=kinds, focus=focus[:1], focus_fraction=0.5)


@pytest.mark.slow  # trains 60 steps
def test_mixed_alpha_schedule_lowers_the_loss_on_real_data(tmp_path, medulla) -> None:
    vol = Volume(da.from_array(medulla))
    settings = TrainSettings(
        alpha=2.0, alpha_max=12.0, degradations="thick,thin", steps=60, lr=1e-3, batch=4, crop=48, points=512,
        warmup=5, device="cpu", precision="fp32", preview_every=0, eval_every=10**6, architecture="v2",
    )  # fmt: skip
    # (v2: the untrained NiivModel() below, the baseline, is one)
    result = train([vol], settings, tmp_path / "w.safetensors", progress=False)
    # (the per-step loss swings with each batch's alpha: fixed batches below measure the fall)
    trained = load_weights(result.weights)
    assert trained.card["alpha_range"] == [2.0, 12.0] and trained.card["degradations"] == ["thick", "thin"]
    # fixed batches never trained on, at three alphas: below the untrained model's (bilinear) loss at each
    fixed = LateralPairSampler([vol], (2.0, 12.0), 48, 1024, degradations=(THICK,))
    for step in (1, 2, 3):
        b = fixed.batch(999, step, 8)
        with torch.no_grad():
            err = float((trained.model(b.inputs, b.coords, b.alpha) - b.targets).abs().mean())
            base = float((NiivModel()(b.inputs, b.coords, b.alpha) - b.targets).abs().mean())
        assert err < 0.97 * base, (b.alpha, err, base)
