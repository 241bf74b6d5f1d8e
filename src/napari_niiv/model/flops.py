"""How much arithmetic a niiv network does: the yardstick of the benchmarks' limits and of the
"fraction of v2's FLOPs" a small model is held to. Counted from the layers, 2 x multiply-adds."""

from __future__ import annotations

from torch import nn

from .niiv import NiivModel


def attention_flops(model: NiivModel) -> tuple[float, float]:
    """(per encoded input pixel, per decoded point) of the local attention: keys and values are
    projected once per latent, the query and the two products per point; (0, 0) without it."""
    att = model.attention
    if att is None:
        return 0.0, 0.0
    per_pixel = 2 * (att.key.in_features * att.key.out_features + att.value.in_features * att.value.out_features)
    k = (2 * att.radius + 1) ** 2
    return per_pixel, 2 * att.query.in_features * att.query.out_features + 2 * 2 * k * att.dim  # q; q.k and w.v


def model_flops(model: NiivModel) -> dict[str, float]:
    """FLOPs per encoded input pixel (encoder convolutions, attention keys/values) and per decoded
    output point (attention query and products, every decoder MLP layer); gathers count zero."""
    enc = 0.0
    for m in model.encoder.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            enc += 2 * m.in_channels // m.groups * m.out_channels * kh * kw
    point = sum(2 * m.in_features * m.out_features for m in model.decoder.modules() if isinstance(m, nn.Linear))
    att_pixel, att_point = attention_flops(model)
    return {"encoder_per_pixel": enc + att_pixel, "decoder_per_point": point + att_point}


def per_output_pixel(flops: dict[str, float], alpha: float = 8.0) -> float:
    """FLOPs per output pixel of an xz reconstruction at scale 1: one input pixel serves ``alpha``."""
    return flops["encoder_per_pixel"] / alpha + flops["decoder_per_point"]
