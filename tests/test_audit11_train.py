"""Audit 11, the edges of training (`niiv train` and ``training.train.train``): the Python API replaced
an existing weights file silently; ``--focus-fraction`` without ``--focus`` was ignored; a constant or
NaN training volume among several was refused without saying which; a ``--teacher`` was used outside
the alphas it was trained for (the student learned its extrapolations)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_niiv.cli import main
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.weights import load_weights, save_weights
from napari_niiv.model import NiivConfig
from napari_niiv.training.train import TrainSettings, checkpoint_path, train

from .conftest import random_model, write_tif

FAST = dict(
    alpha=4.0, architecture="fast", steps=1, batch=2, crop=32, points=64, warmup=1, device="cpu", precision="fp32"
)
CLI = ["--alpha", "4", "--arch", "fast", "--steps", "1", "--batch", "2", "--crop", "32", "--device", "cpu"]


def _cli(capsys, *args) -> tuple[int, str]:
    code = main(["train", *(str(a) for a in args)])
    return code, capsys.readouterr().err


def test_the_api_never_replaces_weights_or_an_unfinished_run_without_overwrite(tmp_path, medulla) -> None:
    """train() wrote over an existing OUT where `niiv train` refused it without --overwrite."""
    out = tmp_path / "w.safetensors"
    train([medulla], TrainSettings(**FAST), out, progress=False)
    before, ckpt_before = out.read_bytes(), checkpoint_path(out).read_bytes()
    other = TrainSettings(**{**FAST, "seed": 1})
    with pytest.raises(
        NiivInputError, match=r"w.safetensors already exists; choose another out, resume=True, or pass overwrite=True"
    ):
        train([medulla], other, out, progress=False)
    assert out.read_bytes() == before and checkpoint_path(out).read_bytes() == ckpt_before
    # an unfinished run's checkpoint alone (the weights moved away) is not replaced either
    out.rename(tmp_path / "kept.safetensors")
    with pytest.raises(
        NiivInputError, match=r"holds an unfinished run: pass resume=True to continue it, or overwrite=True"
    ):
        train([medulla], other, out, progress=False)
    assert checkpoint_path(out).read_bytes() == ckpt_before and not out.exists()
    # asked for: replaced
    (tmp_path / "kept.safetensors").rename(out)
    assert train([medulla], other, out, progress=False, overwrite=True).steps_done == 1
    assert out.read_bytes() != before and load_weights(out).card["settings"]["seed"] == 1
    # a resume continues its own run, overwrite or not
    assert train([medulla], other, out, progress=False, resume=True).steps_done == 1


def test_the_cli_says_it_in_its_own_words_and_passes_overwrite_through(tmp_path, capsys, medulla) -> None:
    vol, out = tmp_path / "v.tif", tmp_path / "w.safetensors"
    write_tif(vol, medulla)
    assert _cli(capsys, vol, "--out", out, *CLI)[0] == 0
    before = out.read_bytes()
    code, err = _cli(capsys, vol, "--out", out, *CLI, "--seed", "1")
    assert code == 2 and "already exists; choose another --out, --resume, or pass --overwrite" in err
    assert out.read_bytes() == before
    code, err = _cli(capsys, vol, "--out", out, *CLI, "--seed", "1", "--overwrite")
    assert code == 0, err
    assert load_weights(out).card["settings"]["seed"] == 1


def test_focus_fraction_without_focus_is_refused(tmp_path, capsys, medulla) -> None:
    vol, out = tmp_path / "v.tif", tmp_path / "w.safetensors"
    write_tif(vol, medulla)
    code, err = _cli(capsys, vol, "--out", out, *CLI, "--focus-fraction", "0.3")
    assert code == 2 and not out.exists()
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "--focus-fraction 0.3 does nothing without --focus" in err and "add --focus, or drop --focus-fraction" in err
    code, err = _cli(capsys, vol, "--out", out, *CLI, "--focus", "thick@4-4", "--focus-fraction", "0")
    assert code == 2 and "--focus thick@4-4 with --focus-fraction 0 draws no batch there" in err
    # the API's mirror images: a fraction without focus, and a focus drawn for no batch
    with pytest.raises(NiivInputError, match=r"focus_fraction 0\.3 without focus does nothing"):
        train([medulla], TrainSettings(**FAST, focus_fraction=0.3), out, progress=False)
    with pytest.raises(NiivInputError, match="focus 'thick@4-4' with focus_fraction 0 does nothing"):
        train([medulla], TrainSettings(**FAST, focus="thick@4-4"), out, progress=False)
    # a focus that names nothing (",": an empty list) is no focus (review 11: it passed, drawing none)
    with pytest.raises(NiivInputError, match=r"focus_fraction 0\.5 without focus does nothing"):
        train([medulla], TrainSettings(**FAST, focus=",", focus_fraction=0.5), out, progress=False)
    assert not out.exists()
    # --focus alone still draws half its batches there
    assert _cli(capsys, vol, "--out", out, *CLI, "--focus", "thick@4-4")[0] == 0
    assert load_weights(out).card["settings"]["focus_fraction"] == 0.5


def test_a_constant_or_nan_training_volume_is_named(tmp_path, capsys, medulla) -> None:
    good, flat, holed = tmp_path / "good.tif", tmp_path / "flat.tif", tmp_path / "holed.tif"
    write_tif(good, medulla)
    write_tif(flat, np.full_like(medulla, 7))
    nan = medulla.astype(np.float32)
    nan[3, 5, 5] = np.nan
    write_tif(holed, nan)
    out = tmp_path / "w.safetensors"
    code, err = _cli(capsys, good, flat, "--out", out, *CLI)
    assert code == 2 and "training volume 2 of 2 (flat) is constant" in err
    code, err = _cli(capsys, good, holed, good, "--out", out, *CLI)
    assert code == 2 and "training volume 2 of 3 (holed) contains NaN or infinite values" in err
    assert not out.exists()


def test_nan_the_normalisation_sample_misses_is_refused_before_the_first_step(tmp_path, medulla) -> None:
    """A NaN between the normalisation's sampled voxels stopped the run at the first crop that met
    it (any step, and again on every resume), without naming the volume."""
    from napari_niiv.data.normalise import fit_normalisation

    big = np.tile(medulla.astype(np.float32), (1, 4, 4))  # 64 x 256 x 256: sampled every other voxel
    big[33, 101, 101] = np.nan
    fit_normalisation(big)  # the sample misses it
    fit_normalisation(big[20:])
    out = tmp_path / "w.safetensors"
    with pytest.raises(NiivInputError, match=r"training volume 2 of 2 \(volume\) contains NaN .* plane z 33"):
        train([medulla, big], TrainSettings(**FAST), out, progress=False)
    # planes given by z_ranges are counted in the volume's own planes
    with pytest.raises(NiivInputError, match=r"the training volume \(volume\) contains NaN .* plane z 33"):
        train([big], TrainSettings(**FAST), out, z_ranges=[(20, 64)], progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_teacher_outside_its_alpha_range_is_refused(tmp_path, capsys, medulla) -> None:
    one = tmp_path / "t8.safetensors"
    save_weights(one, random_model(NiivConfig.fast()), 8.0, None, card={"architecture": "fast"})
    ranged = tmp_path / "t2-12.safetensors"
    save_weights(
        ranged, random_model(NiivConfig.fast()), 2.0, None, card={"architecture": "fast", "alpha_range": [2, 12]}
    )
    out = tmp_path / "out" / "w.safetensors"
    out.parent.mkdir()
    with pytest.raises(
        NiivInputError, match=r"the teacher .*t8.safetensors was trained for alpha 8, and this run trains for alpha 4:"
    ):
        train([medulla], TrainSettings(**{**FAST, "teacher": str(one)}), out, progress=False)
    vol = tmp_path / "v.tif"
    write_tif(vol, medulla)
    code, err = _cli(capsys, vol, "--out", out, *CLI, "--alpha-max", "14", "--teacher", ranged)
    assert code == 2 and "was trained for alpha 2 to 12, and this run trains for alpha 4 to 14" in err
    assert "the run's lowest and highest alpha inside alpha 2 to 12" in err
    assert list(out.parent.iterdir()) == []
    # inside its range (to the viewer's 1 % tolerance), it teaches
    inside = TrainSettings(**{**FAST, "alpha_max": 12.1, "teacher": str(ranged)})
    assert train([medulla], inside, out, progress=False).steps_done == 1


def test_nan_in_a_volume_read_lazily_names_it_at_the_crop_that_meets_it(monkeypatch, medulla) -> None:
    """Volumes over 2 GiB are cropped lazily (no scan before the first step): the crop that meets a
    NaN refused the run as 'the training volume', whichever of several it was."""
    from napari_niiv.data import pairs
    from napari_niiv.data.io import as_volume

    monkeypatch.setattr(pairs, "_IN_MEMORY_BYTES", 0)  # every volume read lazily, as a large one is
    holed = medulla.astype(np.float32)
    holed[:, :, :] = np.nan  # every crop meets it; the normalisation is given (its sample would refuse it)
    vols = [as_volume(medulla, name="fine"), as_volume(holed, name="holed")]
    norm = pairs.fit_normalisation(medulla)
    sampler = pairs.LateralPairSampler(vols, 4.0, 32, 64, normalisations=[norm, norm])
    rng = np.random.default_rng(0)
    with pytest.raises(NiivInputError, match=r"^training volume 2 of 2 \(holed\) contains NaN .*plane z \d+"):
        for _ in range(50):  # the draws reach volume 2 within a few crops
            sampler.crops(rng, 1)


def test_an_empty_volume_name_is_refused_as_empty_in_train_as_in_evaluate(tmp_path, capsys) -> None:
    """`niiv train "" --out W` (an unset shell variable) read the current folder and said it is not a
    zarr store; `niiv evaluate` had its own check. One check in the argument parsing serves all."""
    code, err = _cli(capsys, "", "--out", tmp_path / "w.safetensors", *CLI)
    assert code == 2 and "a volume was given as an empty name: give each volume's file or store" in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_lazily_read_volume_is_judged_on_the_planes_trained_on_and_named(monkeypatch, medulla) -> None:
    """A volume read lazily had its normalisation fitted on all its planes, not those given by its z
    range: NaN outside the range refused the run, unnamed (review 11); a refusal inside it now names
    the volume."""
    from napari_niiv.data import pairs
    from napari_niiv.data.io import as_volume

    monkeypatch.setattr(pairs, "_IN_MEMORY_BYTES", 0)  # read lazily, as a volume over 2 GiB is
    holed = medulla.astype(np.float32)
    holed[40:] = np.nan  # a registration's padding, past the planes trained on
    vols = [as_volume(medulla, name="fine"), as_volume(holed, name="holed")]
    sampler = pairs.LateralPairSampler(vols, 4.0, 32, 64, z_ranges=[None, (0, 20)])
    assert sampler.crops(np.random.default_rng(0), 8).shape == (8, 32, 32)
    flat = medulla.copy()
    flat[:20] = 7  # constant on the planes trained on
    with pytest.raises(NiivInputError, match=r"^training volume 2 of 2 \(flat\) is constant"):
        pairs.LateralPairSampler([vols[0], as_volume(flat, name="flat")], 4.0, 32, 64, z_ranges=[None, (0, 20)])
