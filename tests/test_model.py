import pytest
import torch

from napari_niiv.model import NiivConfig, NiivModel
from napari_niiv.model.decoder import positional_encoding

from .conftest import random_model


def render(model: NiivModel, grid, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The model queried at the separable grid ``rows`` x ``cols`` -> (B, R, C)."""
    rr, cc = torch.meshgrid(rows, cols, indexing="ij")
    coords = torch.stack((rr, cc), dim=-1).reshape(1, -1, 2).expand(grid.latents.shape[0], -1, -1)
    return model.query(grid, coords).reshape(-1, rows.numel(), cols.numel())


@pytest.mark.parametrize("config", [NiivConfig.v2(), NiivConfig.v1()], ids=["v2", "v1"])
def test_arbitrary_output_grids(config: NiivConfig) -> None:
    model = random_model(config)
    image = torch.rand(3, 1, 5, 37)
    grid = model.encode(image, alpha=5.5)
    assert grid.latents.shape == (3, 64, 5, 37)
    for rows, cols in [(27, 37), (11, 80), (1, 1), (64, 3)]:
        out = render(model, grid, torch.linspace(0.01, 4.99, rows), torch.linspace(0.0, 37.0, cols))
        assert out.shape == (3, rows, cols)
        assert torch.all((out > 0) & (out < 1))
    scattered = torch.rand(3, 1000, 2) * torch.tensor([5.0, 37.0])
    assert model.query(grid, scattered).shape == (3, 1000)


def test_parameter_count_matches_paper() -> None:
    n = sum(p.numel() for p in NiivModel(NiivConfig.v2()).parameters())
    assert 0.75e6 < n < 0.80e6  # paper: ~0.78 M


def test_value_depends_on_position_only() -> None:
    """The refined latent of a point must not depend on which other points are queried with it
    (upstream's attention mixes pixels and channels and fails exactly this)."""
    model = random_model()
    image = torch.rand(1, 1, 6, 20)
    grid = model.encode(image, alpha=4.0)
    coords = torch.rand(1, 500, 2) * torch.tensor([6.0, 20.0])
    together = model.query(grid, coords)
    alone = torch.cat([model.query(grid, coords[:, i : i + 1]) for i in range(0, 500, 50)], dim=1)
    torch.testing.assert_close(together[:, ::50], alone, atol=1e-6, rtol=0)


def test_attention_changes_the_latent() -> None:
    model = random_model()
    grid = model.encode(torch.rand(1, 1, 6, 20), alpha=4.0)
    coords = torch.rand(1, 64, 2) * torch.tensor([6.0, 20.0])
    with_attention = model.query(grid, coords)
    model.attention = None
    assert not torch.allclose(with_attention, model.query(grid, coords))


def test_keys_values_projected_once_equal_per_query_projection() -> None:
    """Projecting grid latents then interpolating equals interpolating then projecting."""
    from napari_niiv.model.latent_field import sample_bilinear

    model = random_model()
    grid = model.encode(torch.rand(1, 1, 4, 9), alpha=3.0)
    coords = torch.rand(1, 50, 2) * torch.tensor([4.0, 9.0])
    interp = sample_bilinear(grid.latents, coords)
    direct = torch.cat((model.attention.key(interp), model.attention.value(interp)), dim=-1)
    torch.testing.assert_close(sample_bilinear(grid.keys_values, coords), direct, atol=1e-5, rtol=1e-5)


def test_positional_encoding_is_periodic_per_input_pixel() -> None:
    p = torch.rand(100, 2) * 10
    torch.testing.assert_close(positional_encoding(p, 2), positional_encoding(p + 3.0, 2), atol=1e-4, rtol=0)
    assert positional_encoding(p, 2).shape == (100, 8)


def test_untrained_residual_model_is_bilinear_interpolation() -> None:
    """Zero-initialised residual decoder: output = bilinear input value (the starting point)."""
    model = NiivModel()
    image = torch.rand(1, 1, 4, 8) * 0.9 + 0.05
    out = render(model, model.encode(image, 4.0), (torch.arange(16) + 0.5) / 4, torch.arange(8) + 0.5)
    ref = torch.nn.functional.interpolate(image, size=(16, 8), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_gradients_reach_every_parameter() -> None:
    model = random_model()
    model.train()
    out = model(torch.rand(2, 1, 4, 16), torch.rand(2, 300, 2) * torch.tensor([4.0, 16.0]), 4.0)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu() -> None:
    model = random_model()
    image = torch.rand(1, 1, 4, 16)
    coords = torch.rand(1, 200, 2) * torch.tensor([4.0, 16.0])
    cpu = model(image, coords, 4.0)
    gpu = model.cuda()(image.cuda(), coords.cuda(), 4.0).cpu()
    torch.testing.assert_close(cpu, gpu, atol=1e-4, rtol=0)


def test_flops_are_counted_from_the_layers_as_by_hand() -> None:
    """v2 at alpha 8: the issue's 0.70 MFLOP per output pixel, made of (per input pixel) 6 blocks
    of two 64x64 3x3 convolutions, the head, the body's tail conv and K/V; (per point) the 73-input
    5x256 MLP, the query and the 3x3 attention products."""
    from napari_niiv.model import NiivConfig, NiivModel
    from napari_niiv.model.flops import model_flops, per_output_pixel

    f = model_flops(NiivModel(NiivConfig.v2()))
    convs = 2 * 9 * (1 * 64 + 12 * 64 * 64 + 64 * 64)
    assert f["encoder_per_pixel"] == convs + 2 * 2 * 64 * 64
    mlp = 2 * (73 * 256 + 4 * 256 * 256 + 256 * 1)
    assert f["decoder_per_point"] == mlp + 2 * 64 * 64 + 4 * 9 * 64
    assert per_output_pixel(f, 8.0) == pytest.approx(0.695e6, rel=1e-3)


def test_acquisition_embedding_starts_as_the_same_model_and_then_depends_on_what_it_is_told() -> None:
    """A zero embedding added to trained weights changes nothing; once learned, the latents depend
    on the alpha and the section thickness given, which a plain model's do not."""
    plain = random_model(NiivConfig.fast())
    embedded = NiivModel(NiivConfig(**{**NiivConfig.fast().to_dict(), "acquisition_embedding": True})).eval()
    missing, unexpected = embedded.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["encoder.acquisition.alpha", "encoder.acquisition.thickness"] and not unexpected
    image = torch.rand(2, 1, 6, 30)
    coords = torch.rand(2, 200, 2) * torch.tensor([6.0, 30.0])
    with torch.no_grad():
        for alpha, thickness in ((3.0, None), (11.0, 1.0)):
            assert torch.equal(embedded(image, coords, alpha, thickness), plain(image, coords, alpha, thickness))
        embedded.encoder.acquisition.alpha.normal_()
        embedded.encoder.acquisition.thickness.normal_()
        latents = {told: embedded.encode(image, *told).latents for told in ((3.0, None), (11.0, None), (11.0, 1.0))}
        assert (latents[3.0, None] - latents[11.0, None]).abs().max() > 1e-2
        assert (latents[11.0, None] - latents[11.0, 1.0]).abs().max() > 1e-2
        assert torch.equal(embedded.encode(image, 11.0, 11.0).latents, latents[11.0, None])  # None: as thick as alpha
        assert torch.equal(plain.encode(image, 3.0).latents, plain.encode(image, 11.0, 1.0).latents)
