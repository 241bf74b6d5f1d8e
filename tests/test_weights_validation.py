"""Weights are validated before use: NaN/inf tensors, absurd architectures and broken metadata are
refused with a message, and one bad file in the user folder never breaks `niiv info`."""

from __future__ import annotations

import json

import pytest
import torch

from napari_niiv.cli import main
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.weights import load_weights, save_weights
from tests.conftest import random_model, rewrite_weights


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.safetensors"
    save_weights(path, random_model(), 8.0, None, card={"name": "good"})
    return path


def _variant(good, tmp_path, name, tensors=None, **meta_changes):
    return rewrite_weights(good, tmp_path / f"{name}.safetensors", tensors, **meta_changes)


def _nan(state):
    key = next(k for k in state if k.endswith("weight"))
    state[key] = state[key].clone()
    state[key].view(-1)[3] = float("nan")
    return state


def _inf(state):
    key = next(k for k in state if k.endswith("bias"))
    state[key] = torch.full_like(state[key], float("inf"))
    return state


def _missing(state):
    state.pop(next(k for k in state if k.endswith("bias")))
    return state


def _extra(state):
    return {**state, "model.decoder.spare.weight": torch.zeros(3)}


def _reshaped(state):
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 2)
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    return state


def _config(**changes):
    return json.dumps({**random_model().config.to_dict(), **changes})


CASES = {
    "nan_tensor": ({"tensors": _nan}, "NaN or infinite"),
    "inf_tensor": ({"tensors": _inf}, "NaN or infinite"),
    "missing_tensor": ({"tensors": _missing}, r"1 tensor\(s\) missing, e\.g\. \S+bias"),
    "extra_tensor": ({"tensors": _extra}, "1 unexpected, e.g. decoder.spare.weight"),
    "reshaped_tensor": ({"tensors": _reshaped}, r"1 of another shape, e\.g\. \S+: \(\d+, \d+\) in the file"),
    "million_blocks": ({"config": _config(encoder_blocks=1_000_000)}, "encoder_blocks"),
    "negative_dim": ({"config": _config(latent_dim=-4)}, "latent_dim"),
    "config_not_json": ({"config": "{oops"}, "architecture description is invalid"),
    "no_alpha": ({"alpha": None}, "no alpha"),
    "bad_alpha": ({"alpha": "nan"}, "alpha is not usable"),
    "bad_normalisation": ({"normalisation": "{not json"}, "normalisation metadata"),
    "inverted_normalisation": ({"normalisation": json.dumps({"low": 5, "high": 1})}, "normalisation metadata"),
    "bad_card": ({"card": "[1, 2"}, "model card"),
    "alpha_range_number": ({"card": json.dumps({"alpha_range": 3})}, "alpha_range 3 is not usable"),
    "alpha_range_text": ({"card": json.dumps({"alpha_range": "oops"})}, "alpha_range 'oops'"),
    "alpha_range_three": ({"card": json.dumps({"alpha_range": [2, 4, 8]})}, "not two values"),
    "alpha_range_inverted": ({"card": json.dumps({"alpha_range": [8, 2]})}, "low above high"),
    "alpha_range_zero": ({"card": json.dumps({"alpha_range": [0, 8]})}, "alpha_range"),
    "degradations_number": ({"card": json.dumps({"degradations": 4})}, "degradations 4"),
    "degradations_unknown": ({"card": json.dumps({"degradations": ["thick", "fog"]})}, "degradations"),
    # evaluate keys its rows by the name: a list was a TypeError traceback there
    "name_list": ({"card": json.dumps({"name": ["x"]})}, r"name \['x'\] is not usable; it needs a text"),
    "purpose_number": ({"card": json.dumps({"purpose": 3})}, "purpose 3 is not usable"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_weights_are_refused_with_a_reason(good, tmp_path, case) -> None:
    changes, message = CASES[case]
    bad = _variant(good, tmp_path, case, **changes)
    with pytest.raises(NiivInputError, match=message):
        load_weights(bad)


def test_good_weights_still_load(good, tmp_path) -> None:
    w = load_weights(good)
    assert w.alpha == 8.0 and w.card["name"] == "good" and w.alpha_range == (8.0, 8.0)
    card = json.dumps({"alpha_range": ["2", 12], "degradations": ["thick", "psf:3"]})  # text alphas are read
    assert load_weights(_variant(good, tmp_path, "ranged", card=card)).alpha_range == (2.0, 12.0)


def test_one_bad_file_is_listed_as_unusable_by_niiv_info(good, tmp_path, monkeypatch, capsys) -> None:
    folder = tmp_path / "user"
    folder.mkdir()
    _variant(good, folder, "diverged", tensors=_nan)
    (folder / "truncated.safetensors").write_bytes(good.read_bytes()[:100])
    monkeypatch.setenv("NIIV_WEIGHTS_DIR", str(folder))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "user/diverged: unusable" in out and "NaN" in out
    assert "user/truncated: unusable" in out
    assert "niiv-v2-fibsem-a8: alpha 8" in out  # the shipped weights are still listed


def test_a_folder_given_as_weights_is_named_as_one_with_the_files_in_it(tmp_path, capsys) -> None:
    """`--weights FOLDER` said 'weights file not found' (the CLI-stores audit 9)."""
    from napari_niiv.inference.weights import shipped_dir

    with pytest.raises(NiivInputError, match=r"is a folder; give one weights file in it \(niiv-em.safetensors, "):
        load_weights(shipped_dir())
    (tmp_path / "empty").mkdir()
    with pytest.raises(NiivInputError, match=r"is a folder; give one weights file in it \(it holds no .safetensors\)"):
        load_weights(tmp_path / "empty")
    from tests.conftest import data_path

    src = data_path("anisotropic_em", "cremi_a.tif")
    args = ["reconstruct", str(src), str(tmp_path / "o.tif"), "--alpha", "10", "--region", "0:4,0:48,0:48"]
    assert main([*args, "--weights", str(tmp_path / "empty")]) == 2
    assert "empty is a folder; give one weights file in it" in capsys.readouterr().err
