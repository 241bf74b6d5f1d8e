"""The inference engine's fast paths give the model's results: bf16 within its precision, compiled
equal to eager, fixed-size chunks equal to one pass; and the precision each device gets."""

from __future__ import annotations

import pytest
import torch

from napari_niiv.inference.devices import autocast_dtype, cpu_has_bf16
from napari_niiv.inference.engine import InferenceEngine
from napari_niiv.inference.settings import InferenceSettings
from tests.conftest import CancelAfter, random_model


@pytest.fixture(scope="module")
def slices() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    image = torch.rand(3, 1, 12, 40)
    return image, (torch.arange(90) + 0.5) / 8, torch.arange(37) + 1.5


def exact(model, image, rows, cols) -> torch.Tensor:
    """The model itself, all points of the grid ``rows`` x ``cols`` in one query."""
    rr, cc = torch.meshgrid(rows, cols, indexing="ij")
    coords = torch.stack((rr, cc), dim=-1).reshape(1, -1, 2).expand(image.shape[0], -1, -1)
    with torch.inference_mode():
        return model.query(model.encode(image, 8.0), coords).reshape(-1, rows.numel(), cols.numel())


@pytest.mark.parametrize("chunk", [7, 100, 4096])
@pytest.mark.parametrize("row_step", [1 / 8, 0.3], ids=["scale 1: shared neighbours", "any spacing"])
def test_fp32_engine_is_the_model(slices, chunk, row_step) -> None:
    model = random_model()
    image, _, cols = slices
    rows = torch.arange(0.2, 11.9, row_step)
    eng = InferenceEngine(model, InferenceSettings(device="cpu", precision="fp32", alpha=8.0), chunk=chunk)
    grid = eng.encode(image, 8.0)
    assert eng._neighbours_on_grid(grid, rows, cols) == (row_step == 1 / 8)
    torch.testing.assert_close(eng.render(grid, rows, cols), exact(model, image, rows, cols), atol=2e-6, rtol=0)


@pytest.mark.parametrize("shape", ["one column", "one row", "one point"])
def test_one_column_or_row_takes_the_shared_neighbours_path_and_is_the_model(slices, shape) -> None:
    """A yz slice decoded for an xz view is one column per plane (an xy view: one row): the
    shared-neighbour path, with its one-voxel rim, gives the model's result."""
    model = random_model()
    image, rows, cols = slices
    rows, cols = {"one column": (rows, cols[5:6]), "one row": (rows[17:18], cols), "one point": (rows[3:4], cols[:1])}[
        shape
    ]
    eng = InferenceEngine(model, InferenceSettings(device="cpu", precision="fp32", alpha=8.0), chunk=50)
    grid = eng.encode(image, 8.0)
    assert eng._neighbours_on_grid(grid, rows, cols)
    torch.testing.assert_close(eng.render(grid, rows, cols), exact(model, image, rows, cols), atol=2e-6, rtol=0)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_bf16_engine_stays_close_and_keeps_the_output_fine_grained(slices) -> None:
    model = random_model()
    image, rows, cols = slices
    eng = InferenceEngine(model, InferenceSettings(device="cpu", precision="auto", alpha=8.0))
    assert eng.precision_name == "bf16"
    out = eng.render(eng.encode(image, 8.0), rows, cols)
    ref = exact(model, image, rows, cols)
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 5e-3
    # The output is not rounded to bf16 steps (1/256 near 0.5): the last layer runs in fp32.
    assert (out * 256 - (out * 256).round()).abs().max() > 0.05


@pytest.mark.slow  # torch.compile
def test_compiled_engine_equals_eager(slices) -> None:
    model = random_model()
    image, rows, cols = slices
    eager = InferenceEngine(model, InferenceSettings(device="cpu", precision="fp32", alpha=8.0), chunk=1024)
    compiled = InferenceEngine(
        model, InferenceSettings(compiled=True, device="cpu", precision="fp32", alpha=8.0), chunk=1024
    )
    grid = eager.encode(image, 8.0)
    torch.testing.assert_close(compiled.render(grid, rows, cols), eager.render(grid, rows, cols), atol=1e-5, rtol=0)
    # another view size reuses the one compiled chunk shape (padding), and gives the same values
    torch.testing.assert_close(
        compiled.render(grid, rows[:13], cols[:5]), eager.render(grid, rows[:13], cols[:5]), atol=1e-5, rtol=0
    )


def test_precision_each_device_gets(monkeypatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(cuda, "auto") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(cuda, "auto") is torch.float16  # pre-Ampere GPUs
    assert autocast_dtype(cuda, "fp32") is None
    assert autocast_dtype(torch.device("cpu"), "auto") is (torch.bfloat16 if cpu_has_bf16() else None)
    assert autocast_dtype(torch.device("mps"), "auto") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_engine_matches_cpu(slices) -> None:
    model = random_model()
    image, rows, cols = slices
    ref = exact(model, image, rows, cols)
    eng = InferenceEngine(random_model(), InferenceSettings(device="cuda", precision="auto", alpha=8.0))
    out = eng.render(eng.encode(image, 8.0), rows, cols).cpu()
    assert (out - ref).abs().max() < 5e-3


@pytest.mark.parametrize("arch", ["v2", "fast"], ids=["with attention", "attention-free: into the feature grid"])
def test_wide_slices_are_encoded_in_tiles_with_the_same_latents(arch) -> None:
    from napari_niiv.model import NiivConfig

    model = random_model(NiivConfig.named(arch))
    image = torch.rand(2, 1, 20, 1300)
    eng = InferenceEngine(model, InferenceSettings(device="cpu", precision="fp32", alpha=8.0))
    tiled = eng.encode(image, 8.0)
    with torch.inference_mode():
        whole = model.encode(image, 8.0)
    torch.testing.assert_close(tiled.latents, whole.latents, atol=1e-5, rtol=0)
    if whole.keys_values is not None:
        torch.testing.assert_close(tiled.keys_values, whole.keys_values, atol=1e-5, rtol=0)
    else:
        assert tiled.keys_values is None


@pytest.mark.parametrize("arch", ["v1", "v2", "fast"])
def test_an_encoding_stops_once_cancelled_and_is_unchanged_otherwise(arch) -> None:
    """A batch of a save's slices took 3.6 s to encode (niiv-em, 2 cores), and a Cancel waited for
    it whole: the engine asks ``cancelled`` before each layer of the CPU's fused kernels
    (attention-free models) and between column tiles (all), and gives up with None."""
    from napari_niiv.model import NiivConfig

    model = random_model(NiivConfig.named(arch))
    image = torch.rand(2, 1, 20, 1300)  # three column tiles
    eng = InferenceEngine(model, InferenceSettings(device="cpu", precision="fp32", alpha=8.0))
    first = CancelAfter(1)
    assert eng.encode_until(image, 8.0, first) is None
    # stopped at the second question: inside the first tile where the fused kernels ask, else at the second tile
    assert first.asked == 2
    never = CancelAfter(10**6)
    whole = eng.encode_until(image, 8.0, never)
    per_layer = model.attention is None and eng._conv is not None
    assert never.asked == (3 + 3 * (2 * model.config.encoder_blocks + 2) if per_layer else 3)  # tiles (+ layers)
    assert whole is not None and torch.equal(whole.latents, eng.encode(image, 8.0).latents)


def test_attention_one_input_pixel_apart_is_decoded_by_the_general_path_and_is_the_model(slices) -> None:
    """With attention_spacing 'input' the neighbours are one input pixel apart (not one output
    voxel): the engine's shared-neighbour shortcut does not apply, and its result is the model's;
    the neighbours really are one input pixel apart, so the result differs from 'output' spacing."""
    from napari_niiv.model import NiivConfig

    image, rows, cols = slices
    wide = random_model(NiivConfig.named("v2-input"))
    eng = InferenceEngine(wide, InferenceSettings(device="cpu", precision="fp32", alpha=8.0))
    grid = eng.encode(image, 8.0)
    assert not eng._neighbours_on_grid(grid, rows, cols)
    out = eng.render(grid, rows, cols)
    torch.testing.assert_close(out, exact(wide, image, rows, cols), atol=2e-6, rtol=0)
    near = random_model(NiivConfig.v2())
    near.load_state_dict(wide.state_dict())
    assert (exact(near, image, rows, cols) - out).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ["v2", "fast"], ids=["with attention", "attention-free: into the feature grid"])
def test_engine_tells_the_acquisition_embedding_its_alpha_and_thickness(slices, arch) -> None:
    """Both of the engine's encoding paths tell the encoder the settings' alpha and the section
    thickness their degradation gives: the engine's result is the model's for each, and they differ."""
    from napari_niiv.model import NiivConfig

    model = random_model(NiivConfig(**{**NiivConfig.named(arch).to_dict(), "acquisition_embedding": True}))
    torch.nn.init.normal_(model.encoder.acquisition.alpha)
    torch.nn.init.normal_(model.encoder.acquisition.thickness)
    image, _, cols = slices
    rows = torch.arange(0.2, 11.9, 0.3)
    rr, cc = torch.meshgrid(rows, cols, indexing="ij")
    coords = torch.stack((rr, cc), dim=-1).reshape(1, -1, 2).expand(image.shape[0], -1, -1)
    outs = []
    for alpha, degradation, thickness in ((3.0, "thick", 3.0), (8.0, "thick", 8.0), (8.0, "thin", 1.0)):
        settings = InferenceSettings(device="cpu", precision="fp32", alpha=alpha, degradation=degradation)
        assert settings.thickness == thickness
        eng = InferenceEngine(model, settings)
        with torch.inference_mode():
            ref = model.query(model.encode(image, alpha, thickness), coords).reshape(-1, rows.numel(), cols.numel())
        outs.append(eng.render(eng.encode(image, alpha), rows, cols))
        torch.testing.assert_close(outs[-1], ref, atol=2e-6, rtol=0)
    assert (outs[0] - outs[1]).abs().max() > 1e-3 and (outs[1] - outs[2]).abs().max() > 1e-3


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a CUDA device where there is none")
def test_a_cuda_device_asked_for_without_a_gpu_is_named_as_asked() -> None:
    """`--device cuda:0` said "device 'cuda' was asked for" (the evaluate audit's minor list)."""
    from napari_niiv.errors import NiivInputError
    from napari_niiv.inference.devices import pick_device

    with pytest.raises(NiivInputError, match="device 'cuda:0' was asked for but torch sees no CUDA GPU"):
        pick_device("cuda:0")
