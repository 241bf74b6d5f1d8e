"""Separable decoding of attention-free models (niiv-em's v1, niiv-fast) is the model's query at
every (row, column) pair, in every branch it takes; the encoder's own replicate padding is torch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_niiv.inference.devices import cpu_has_bf16
from napari_niiv.inference.engine import InferenceEngine
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.model import NiivConfig
from napari_niiv.model.encoder import ReplicateConv, replicate_pad
from napari_niiv.model.latent_field import AxisLerp
from napari_niiv.model.separable import SeparableDecoding
from tests.conftest import random_model

CONFIGS = {
    "fast": NiivConfig.named("fast"),
    "v1": NiivConfig.named("v1"),
    "no encoding, no residual": NiivConfig(latent_dim=8, encoder_blocks=1, attention=False, pe_bands=0, residual=False),
}
ROWS = (torch.arange(90) + 0.5) / 8  # an xz view at scale 1, alpha 8
# (rows, cols) cases and the branch they take
CASES = {
    "dense rows, input columns": (ROWS, torch.arange(40) + 0.5),
    "sub-view of the columns": (ROWS[5:60], torch.arange(7, 31) + 0.5),
    "one row, fractional columns (an xy view)": (torch.tensor([5.85]), torch.linspace(0.1, 39.9, 64)),
    "sparse rows (coarse view), input columns": (torch.arange(0.5, 12, 4.0), torch.arange(40) + 0.5),
    "unordered rows and columns past the border": (
        torch.tensor([9.3, -1.0, 4.2, 12.7]),
        torch.tensor([41.0, 3.5, -2.0]),
    ),
}


def exact(model, grid, rows, cols) -> torch.Tensor:
    rr, cc = torch.meshgrid(rows, cols, indexing="ij")
    coords = torch.stack((rr, cc), dim=-1).reshape(1, -1, 2).expand(grid.latents.shape[0], -1, -1)
    return model.query(grid, coords).reshape(-1, rows.numel(), cols.numel())


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("case", CASES)
def test_separable_decoding_is_the_query(name, case) -> None:
    model = random_model(CONFIGS[name])
    rows, cols = CASES[case]
    torch.manual_seed(3)
    with torch.inference_mode():
        grid = model.encode(torch.rand(2, 1, 12, 40), 8.0)
        torch.testing.assert_close(
            model.decode_separable(grid, rows, cols), exact(model, grid, rows, cols), atol=3e-6, rtol=0
        )


@pytest.mark.parametrize("points", [None, 40 * 3, 1])
def test_chunks_and_runs_of_rows_equal_one_pass_and_each_grid_row_is_read_once(points) -> None:
    """Chunks of rows cut the runs of rows between two grid rows, ``points`` splits them (3 rows
    of 40 columns, or one row at a time): the same result as one pass. The grid rows read are
    the 12 of the slice, once, whatever the 90 output rows."""
    model = random_model(CONFIGS["fast"])
    cols = torch.arange(40) + 0.5
    with torch.inference_mode():
        grid = model.encode(torch.rand(1, 1, 12, 40), 8.0)
        decoding = SeparableDecoding(model, grid, ROWS, cols, None, points=points)
        assert decoding.inputs.shape[:3] == (1, 12, 40)
        chunks = torch.cat([decoding.decode(i, min(i + 7, ROWS.numel())) for i in range(0, ROWS.numel(), 7)], dim=1)
        torch.testing.assert_close(chunks, exact(model, grid, ROWS, cols), atol=3e-6, rtol=0)


@pytest.mark.parametrize("chunk", [7, 4096])
def test_the_engine_decodes_attention_free_models_separably_and_exactly(chunk) -> None:
    model = random_model(CONFIGS["v1"])
    eng = InferenceEngine(model, InferenceSettings(device="cpu", precision="fp32", alpha=8.0), chunk=chunk)
    grid = eng.encode(torch.rand(3, 1, 12, 40), 8.0)
    for rows, cols in CASES.values():
        with torch.inference_mode():
            torch.testing.assert_close(
                eng.render(grid, rows, cols), exact(eng.model, grid, rows, cols), atol=3e-6, rtol=0
            )


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_bf16_separable_decoding_stays_close_and_keeps_the_output_fine_grained() -> None:
    model = random_model(CONFIGS["fast"])
    eng = InferenceEngine(model, InferenceSettings(device="cpu", precision="auto", alpha=8.0))
    grid = eng.encode(torch.rand(2, 1, 12, 40), 8.0)
    rows, cols = CASES["dense rows, input columns"]
    out = eng.render(grid, rows, cols)
    with torch.inference_mode():
        ref = exact(eng.model, grid, rows, cols)
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 5e-3
    assert (out * 256 - (out * 256).round()).abs().max() > 0.05  # last layer in fp32


def test_a_model_with_attention_is_refused() -> None:
    model = random_model()
    with torch.inference_mode():
        grid = model.encode(torch.rand(1, 1, 6, 10), 8.0)
    with pytest.raises(ValueError, match="without attention"):
        model.decode_separable(grid, ROWS[:4], torch.arange(10) + 0.5)


def test_axis_interpolation_by_hand() -> None:
    """Pixel centres at i + 0.5, border replicated: 1.0 is a quarter of the way from pixel 0 to 1."""
    lerp = AxisLerp.at(torch.tensor([1.0, 0.5, -3.0, 2.9]), 3)
    x = torch.tensor([10.0, 20.0, 40.0])
    torch.testing.assert_close(lerp.apply(lerp.select(x, 0), 0), torch.tensor([15.0, 10.0, 10.0, 40.0]))
    on_centres = AxisLerp.at(torch.arange(3) + 0.5, 3)
    assert on_centres.exact and not lerp.exact


@pytest.mark.parametrize("shape", [(1, 3, 4, 7), (2, 40, 9, 13), (1, 8, 1, 5)])
def test_replicate_padding_is_torchs_in_both_memory_formats(shape) -> None:
    x = torch.randn(shape)
    for fmt in (torch.contiguous_format, torch.channels_last):
        y = x.contiguous(memory_format=fmt)
        torch.testing.assert_close(replicate_pad(y), F.pad(x, (1, 1, 1, 1), mode="replicate"), atol=0, rtol=0)
    assert replicate_pad(x.contiguous(memory_format=torch.channels_last)).is_contiguous(
        memory_format=torch.channels_last
    )


def test_replicate_conv_is_torchs_replicate_conv_with_the_same_weights_and_gradients() -> None:
    torch.manual_seed(0)
    ours = ReplicateConv(3, 4)
    ref = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="replicate")
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 6, 9, requires_grad=True)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours(x.contiguous(memory_format=torch.channels_last)), ref(x))
    (g_ours,) = torch.autograd.grad(ours(x).square().sum(), x)
    (g_ref,) = torch.autograd.grad(ref(x).square().sum(), x)
    torch.testing.assert_close(g_ours, g_ref)


def test_attention_free_encoding_writes_tiles_into_one_feature_grid_with_the_models_latents() -> None:
    """Wide slices are encoded in column tiles straight into the channels-last feature grid (that
    its latents are the model's is tested with the engine's tiles, in test_engine): the image is
    the last channel, and crops and batches of the grid keep it (a view, or with copy their own)."""
    from napari_niiv.model.latent_field import LatentGrid

    model = random_model(CONFIGS["fast"])
    image = torch.rand(2, 1, 10, 1300)
    eng = InferenceEngine(model, InferenceSettings(device="cpu", precision="fp32", alpha=8.0))
    tiled = eng.encode(image, 8.0)
    with torch.inference_mode():
        whole = model.encode(image, 8.0)
    features = tiled.features_last()
    torch.testing.assert_close(features[..., -1], image[:, 0], atol=0, rtol=0)
    assert tiled.latents.data_ptr() == features.data_ptr()  # a view, not a second copy
    crop = tiled.crop(slice(1, 2), slice(3, 7), copy=True)
    assert crop.features_last().data_ptr() != features.data_ptr()
    torch.testing.assert_close(crop.latents, whole.latents[1:2, :, 3:7], atol=1e-5, rtol=0)
    both = LatentGrid.concat([tiled.crop(slice(0, 1)), tiled.crop(slice(1, 2))])
    torch.testing.assert_close(both.features_last(), features, atol=0, rtol=0)
    assert both.nbytes == features.numel() * 4 + image.numel() * 4


def test_the_fused_cpu_layers_give_f_linear_and_relu() -> None:
    """The engine's oneDNN linear (+ReLU) (where the CPU has it) is F.linear (then ReLU): checked
    by the engine's fp32 results above, and here directly in both precisions, with and without
    bias and ReLU."""
    from napari_niiv.inference.devices import fused_linear

    torch.manual_seed(0)
    x, w, b = torch.randn(3, 7, 64), torch.randn(32, 64), torch.randn(32)
    for dtype, atol in ((None, 1e-5), (torch.bfloat16, 0.1)):
        fused = fused_linear(torch.device("cpu"), dtype)
        if fused is None and dtype is None:
            pytest.skip("no oneDNN on this build")
        if fused is None:
            continue  # no bf16 kernel on this CPU (AVX2 without AVX-512 BF16): the engine runs fp32 here
        dt = dtype or torch.float32
        out = fused(x.to(dt), w.to(dt), b.to(dt), True)
        assert out.shape == (3, 7, 32) and out.dtype == dt
        torch.testing.assert_close(out.float(), F.linear(x, w, b).relu(), atol=atol, rtol=0.02)
        plain = fused(x.to(dt), w[:1].to(dt), None, False)
        assert plain.shape == (3, 7, 1) and (plain < 0).any()
        torch.testing.assert_close(plain.float(), F.linear(x, w[:1]), atol=atol, rtol=0.02)


def test_the_fused_cpu_convolutions_run_the_encoders_own_network() -> None:
    """The engine's oneDNN convolutions with their ReLU and skip fused (where the CPU has them)
    give the encoder's own forward: exactly in fp32, to bf16 rounding in bf16; and a kernel asked
    to add and apply the ReLU at once refuses rather than guess the order."""
    from napari_niiv.inference.devices import fused_conv

    model = random_model(CONFIGS["fast"])
    image = torch.rand(2, 1, 12, 40)
    with torch.inference_mode():
        ref = model.encoder(image, 8.0, None)
        for dtype, atol in ((None, 1e-4), (torch.bfloat16, 0.1)):
            conv = fused_conv(torch.device("cpu"), dtype)
            if conv is None and dtype is None:
                pytest.skip("no oneDNN on this build")
            if conv is None:
                continue  # no bf16 kernel on this CPU: the engine runs fp32 here
            out = model.encoder(image, 8.0, None, conv)
            assert out.dtype == (dtype or torch.float32)
            torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0.02)
        conv = fused_conv(torch.device("cpu"), None)
        with pytest.raises(ValueError, match="not both"):
            conv(image, model.encoder.head, True, ref)


@pytest.mark.parametrize("thickness", [None, 1.0])
def test_a_told_encoders_acquisition_shift_rides_on_the_fused_heads_bias(thickness) -> None:
    """The acquisition shift (per channel, after the head) is folded into the head's bias in the
    fused encoder: the same latents as the encoder's own forward, told thick or thin sections,
    for a head with and without a bias."""
    from dataclasses import replace

    from napari_niiv.inference.devices import fused_conv

    conv = fused_conv(torch.device("cpu"), None)
    if conv is None:
        pytest.skip("no oneDNN on this build")
    model = random_model(replace(CONFIGS["fast"], acquisition_embedding=True))
    shift = model.encoder.acquisition
    with torch.no_grad():
        torch.nn.init.normal_(shift.alpha, std=0.5)  # zero at initialisation: make it count
        torch.nn.init.normal_(shift.thickness, std=0.5)
    image = torch.rand(2, 1, 12, 40)
    with torch.inference_mode():
        for head_bias in (True, False):
            if not head_bias:
                model.encoder.head.bias = None
            ref = model.encoder(image, 5.0, thickness)
            untold = model.encoder(image, 8.0, None)
            assert (ref - untold).abs().max() > 0.05  # the shift changes the latents
            torch.testing.assert_close(model.encoder(image, 5.0, thickness, conv), ref, atol=1e-4, rtol=1e-4)


def test_the_fused_skip_accumulates_into_what_the_encoder_gives_up_and_never_into_its_head() -> None:
    """The fused kernel adds a block's skip into the skip's own tensor (no new output); the encoder
    gives it each block's input but a copy of its head, which the global skip still needs, whatever
    layout the kernel returns the head in."""
    from napari_niiv.inference.devices import fused_conv

    fused = fused_conv(torch.device("cpu"), None)
    if fused is None:
        pytest.skip("no oneDNN on this build")
    model = random_model(CONFIGS["fast"])
    image = torch.rand(2, 1, 12, 40)
    with torch.inference_mode():
        x = torch.rand(2, 24, 12, 40).contiguous(memory_format=torch.channels_last)
        add = torch.rand(2, 24, 12, 40).contiguous(memory_format=torch.channels_last)
        out = fused(x, model.encoder.body[0].body[0], False, add)
        assert out.data_ptr() == add.data_ptr()  # summed into the skip itself

        def channels_last_head(x, layer, relu, add):  # a kernel whose head comes back channels-last
            out = fused(x, layer, relu, add)
            return out.contiguous(memory_format=torch.channels_last) if layer is model.encoder.head else out

        ref = model.encoder(image, 8.0, None)
        torch.testing.assert_close(model.encoder(image, 8.0, None, channels_last_head), ref, atol=1e-4, rtol=0.02)
