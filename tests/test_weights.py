import json

import pytest
import torch
from safetensors.torch import save_file

from napari_niiv.data import Normalisation
from napari_niiv.data.degrade import Degradation
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.weights import available_weights, load_weights, resolve_weights, save_weights
from napari_niiv.model import NiivConfig

from .conftest import random_model


def test_round_trip_gives_identical_outputs(tmp_path, model) -> None:
    path = save_weights(tmp_path / "w.safetensors", model, 8.0, Normalisation(3.0, 250.0), card={"note": "x"})
    w = load_weights(path)
    image, coords = torch.rand(1, 1, 4, 16), torch.rand(1, 100, 2) * torch.tensor([4.0, 16.0])
    torch.testing.assert_close(w.model(image, coords, 8.0), model(image, coords, 8.0), atol=0, rtol=0)
    assert w.alpha == 8.0 and w.normalisation == Normalisation(3.0, 250.0) and w.card == {"note": "x"}
    assert w.model.config == model.config
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary files left


def test_saved_file_mode_follows_the_umask(tmp_path, model) -> None:
    import os

    old = os.umask(0o022)
    try:
        path = save_weights(tmp_path / "w.safetensors", model, 8.0, None)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_v1_round_trip(tmp_path) -> None:
    m = random_model(NiivConfig.v1())
    w = load_weights(save_weights(tmp_path / "v1.safetensors", m, 4.0, None))
    assert w.model.attention is None and w.model.config.encoder_blocks == 16


def test_acquisition_embedding_round_trip(tmp_path) -> None:
    """The embedding's vectors are saved and restored with its architecture field."""
    m = random_model(NiivConfig(**{**NiivConfig.fast().to_dict(), "acquisition_embedding": True}))
    torch.nn.init.normal_(m.encoder.acquisition.alpha)
    torch.nn.init.normal_(m.encoder.acquisition.thickness)
    w = load_weights(save_weights(tmp_path / "a.safetensors", m, 6.0, None))
    assert w.model.config.acquisition_embedding
    torch.testing.assert_close(w.model.state_dict(), m.state_dict(), atol=0, rtol=0)


def test_corrupt_and_truncated_files(tmp_path, model) -> None:
    path = save_weights(tmp_path / "w.safetensors", model, 8.0, None)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    for name in ("cut", "junk"):
        with pytest.raises(NiivInputError, match="not a readable weights file"):
            load_weights(tmp_path / f"{name}.safetensors")
    # an upstream niiv checkpoint is named as one (it was "corrupt, truncated ...: download it again")
    torch.save(model.state_dict(), tmp_path / "upstream.pth")
    upstream = r"a PyTorch checkpoint, not napari-niiv weights .*cannot be used directly"
    with pytest.raises(NiivInputError, match=upstream):
        load_weights(tmp_path / "upstream.pth")


def test_foreign_safetensors_file(tmp_path) -> None:
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(NiivInputError, match="not napari-niiv weights"):
        load_weights(tmp_path / "other.safetensors")


def test_weights_of_another_architecture(tmp_path, model) -> None:
    """Tensors of a v2 model under a v1 description: a clear error, not a torch traceback."""
    path = save_weights(tmp_path / "w.safetensors", model, 8.0, None)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["config"] = json.dumps(NiivConfig.v1().to_dict())
    save_file(tensors, str(tmp_path / "lie.safetensors"), metadata=meta)
    with pytest.raises(NiivInputError, match="another architecture"):
        load_weights(tmp_path / "lie.safetensors")


def test_failed_save_keeps_the_old_file(tmp_path, model) -> None:
    path = save_weights(tmp_path / "w.safetensors", model, 8.0, None)
    before = path.read_bytes()

    class Boom(Exception):
        pass

    class Exploding(torch.nn.Module):
        config = model.config

        def state_dict(self):  # type: ignore[override]
            raise Boom

    with pytest.raises(Boom):
        save_weights(path, Exploding(), 8.0, None)  # type: ignore[arg-type]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_registry_lists_shipped_and_user_weights(tmp_path, monkeypatch, model) -> None:
    monkeypatch.setenv("NIIV_WEIGHTS_DIR", str(tmp_path))
    save_weights(tmp_path / "mine.safetensors", model, 10.0, None)
    names = available_weights()
    assert "user/mine" in names
    assert resolve_weights("user/mine") == tmp_path / "mine.safetensors"
    with pytest.raises(NiivInputError, match="unknown weights"):
        resolve_weights("nonexistent-weights")


def test_shipped_default_weights_load() -> None:
    w = load_weights(resolve_weights(None))
    lo, hi = w.card["alpha_range"]
    assert lo <= 8.0 <= hi and w.alpha == lo and w.normalisation is not None
    assert w.card["degradations"] == ["thick", "thin"] and w.card["architecture"] == "v1"
    (table,) = w.card["test"]["tables"]  # held-out scores, bicubic a row of each
    assert table["command"].startswith("niiv evaluate") and "| bicubic |" in table["table"]
    assert {s["method"] for s in table["scores"]} >= {"bicubic", "niiv-em"}
    assert all(torch.isfinite(t).all() for t in w.model.state_dict().values())


def test_final_weights_cannot_restore_an_optimiser(tmp_path, model) -> None:
    from napari_niiv.inference.weights import restore_optimizer

    w = load_weights(save_weights(tmp_path / "w.safetensors", model, 8.0, None), with_optimizer=True)
    with pytest.raises(NiivInputError, match="holds no optimiser state"):
        restore_optimizer(torch.optim.Adam(w.model.parameters()), w)


def test_shipped_fast_weights_are_under_an_eighth_of_v2_and_distilled_from_the_default() -> None:
    """niiv-fast: architecture 'fast', distilled from niiv-em, its card holds the held-out table
    (bicubic, its teacher and v2 rows) and the cost table; at most 1/8 of v2's FLOPs per output
    pixel (alpha 8, xz: an input pixel serves alpha outputs)."""
    from napari_niiv.inference.weights import FAST_WEIGHTS, fast_weights
    from napari_niiv.model import NiivConfig, NiivModel
    from napari_niiv.model.flops import model_flops, per_output_pixel

    w = load_weights(resolve_weights(FAST_WEIGHTS))
    # the fast architecture, told alpha and the sections like its teacher niiv-em
    told = NiivConfig(**{**NiivConfig.fast().to_dict(), "acquisition_embedding": True})
    assert w.model.config == told and w.card["distilled_from"] == "niiv-em"
    (table,) = w.card["test"]["tables"]
    assert {"bicubic", "niiv-fast", "niiv-em", "niiv-v2-fibsem-a8"} <= {s["method"] for s in table["scores"]}
    assert w.card["cost"]["niiv-fast"]["mflop_per_output_pixel"] > 0

    fast, v2 = (per_output_pixel(model_flops(m)) for m in (w.model, NiivModel(NiivConfig.v2())))
    assert fast <= v2 / 8
    # chosen for a CPU's first frame, not on a GPU nor when it is the chosen weights itself
    assert fast_weights("niiv-em", "cpu") == resolve_weights(FAST_WEIGHTS)
    assert fast_weights("niiv-em", "cuda") is None and fast_weights(FAST_WEIGHTS, "cpu") is None
    # only for the sections it learned: thin yes, light microscopy's psf (niiv-lm's) no
    thin, psf3, psf = (Degradation.parse(s) for s in ("thin", "psf:3", "psf"))
    assert fast_weights("niiv-em", "cpu", thin) == resolve_weights(FAST_WEIGHTS)
    assert fast_weights("niiv-lm", "cpu", psf3) is None and fast_weights("niiv-lm", "cpu", psf) is None
