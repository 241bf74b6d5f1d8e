"""A trained weights' card says what its held-out numbers are: against bicubic (what a user would
pick instead, the shipped cards' baseline) as well as bilinear, and on what they were scored."""

from __future__ import annotations

import numpy as np
import pytest

from napari_niiv.data.degrade import Degradation
from napari_niiv.inference.weights import load_weights
from napari_niiv.training.evaluate import evaluate, interpolation
from napari_niiv.training.train import HeldOutCheck, TrainSettings, train

TINY = dict(alpha=4.0, batch=4, crop=32, points=512, warmup=5, device="cpu", precision="fp32", preview_every=0)


def test_card_records_the_held_out_check_and_its_bicubic_baseline(tmp_path, medulla) -> None:
    held_volume = medulla[:16, :32, :32]
    held = HeldOutCheck([held_volume], 4.0, degradation=Degradation("thin"))
    settings = TrainSettings(steps=2, eval_every=2, architecture="fast", degradations="thin", **TINY)
    result = train([np.asarray(medulla[16:])], settings, tmp_path / "w.safetensors", progress=False, held_out=held)
    card = load_weights(result.weights).card
    scores = card["held_out"]
    (bicubic,) = evaluate([held_volume], 4.0, {"bicubic": interpolation("bicubic")}, degradation=Degradation("thin"))
    assert scores["bicubic_cf_psnr"] == pytest.approx(bicubic.cf_psnr)
    assert scores["cf_psnr_gain_bicubic"] == pytest.approx(scores["cf_psnr"] - bicubic.cf_psnr)
    assert scores["psnr_gain_bicubic"] == pytest.approx(scores["psnr"] - bicubic.psnr)
    assert scores["cf_psnr_gain"] == pytest.approx(scores["cf_psnr"] - scores["bilinear_cf_psnr"])
    check = card["held_out_check"]
    assert check["alpha"] == 4.0 and check["degradation"] == "thin"
    assert check["shapes"] == [list(held_volume.shape)] and check["cf_psnr_cutoff"] == 25.0
    assert check["scored"] == "the held-out volume"


def test_no_held_out_check_no_record(tmp_path, medulla) -> None:
    settings = TrainSettings(steps=1, architecture="fast", **TINY)
    result = train([np.asarray(medulla)], settings, tmp_path / "w.safetensors", progress=False)
    card = load_weights(result.weights).card
    assert "held_out_check" not in card and card["held_out"] is None
