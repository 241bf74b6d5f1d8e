"""Pick the compute device and precision: CUDA, then MPS, then CPU; bf16 where the hardware has it."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import torch
from torch.nn import functional as F

from ..errors import NiivInputError
from ..model.encoder import Conv, replicate_pad
from ..model.separable import Linear
from .settings import DEVICES


def _has_mps() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def available_devices() -> list[str]:
    """'auto' and the devices this machine has, in the order of DEVICES."""
    return [
        d
        for d in DEVICES
        if d in ("auto", "cpu") or (d == "cuda" and torch.cuda.is_available()) or (d == "mps" and _has_mps())
    ]


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _has_mps():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NiivInputError("device 'cuda' was asked for but torch sees no CUDA GPU here; use 'cpu' or 'auto'")
    if name == "mps" and not _has_mps():
        raise NiivInputError("device 'mps' was asked for but this machine has no Apple GPU; use 'cpu' or 'auto'")
    if name not in DEVICES and not name.startswith("cuda:"):
        raise NiivInputError(f"unknown device {name!r}; choose one of {DEVICES}")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 / AMX: bf16 matmuls run ~2.5x faster than fp32 (NOTES section 6)."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check()) if check is not None else False


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` ('auto', 'fp32', 'bf16', 'fp16'); None means fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise NiivInputError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """The name of an autocast dtype from :func:`autocast_dtype` ('fp32' for None), as settings,
    engines and weights cards write it."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def lower_thread_priority(nice: int = 10) -> bool:
    """Make the calling background thread yield the CPU to napari's GUI thread (Linux: its nice value;
    the OpenMP threads torch starts from it inherit it). False where the platform has no per-thread
    priority. Work that keeps every core busy then still leaves the interface responsive."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError:
        return False
    return True


def _cpu_onednn_op(device: torch.device, name: str) -> Any | None:
    """torch's oneDNN operator ``name`` where ``device`` is a CPU and this build has oneDNN, else None."""
    op = getattr(getattr(torch.ops, "mkldnn", None), name, None)
    if device.type != "cpu" or op is None or not torch.backends.mkldnn.is_available():
        return None
    return op


def fused_linear(device: torch.device, dtype: torch.dtype | None) -> Linear | None:
    """``x @ w.T + b``, then the ReLU if asked, as one oneDNN call on CPUs (what torch.compile
    emits there): the bias and the ReLU ride on the matmul instead of two more passes over its
    output, ~1.4x faster for the decoder's layers here, and its one-output last layer is ~1.3x
    faster than F.linear's. None where it does not apply or does not give F.linear's result
    (checked once on a small case), so callers fall back to F.linear and relu_."""
    op = _cpu_onednn_op(device, "_linear_pointwise")
    if op is None:
        return None
    dt = dtype or torch.float32

    def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, relu: bool) -> torch.Tensor:
        y = op(x.reshape(-1, x.shape[-1]), w, b, "relu" if relu else "none", [], "")
        return y.reshape(*x.shape[:-1], w.shape[0])

    try:
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=gen).to(dt) for s in ((2, 5, 16), (8, 16), (8,)))
        ref = x.float() @ w.float().T
        ok = torch.allclose(linear(x, w, b, True).float(), torch.relu(ref + b.float()), atol=0.1)
        ok = ok and torch.allclose(linear(x, w[:1], None, False).float(), ref[..., :1], atol=0.1)
    except RuntimeError:
        return None
    return linear if ok else None


def fused_conv(device: torch.device, dtype: torch.dtype | None) -> Conv | None:
    """The encoder's replicate-padded 3x3 convolution with its ReLU or its block's skip as one
    oneDNN call on CPUs (channels-last, in ``dtype``): ~20 % off niiv-fast's encoder here (a pass
    over the activations fewer per layer). None where it does not apply or does not give
    F.conv2d's result (checked once on a small case)."""
    op = _cpu_onednn_op(device, "_convolution_pointwise")
    if op is None:
        return None
    dt = dtype or torch.float32
    geometry = ([0, 0], [1, 1], [1, 1], 1)  # padding (done by replicate_pad), stride, dilation, groups

    def conv(x: torch.Tensor, layer: torch.nn.Conv2d, relu: bool, add: torch.Tensor | None) -> torch.Tensor:
        x = replicate_pad(x.to(dt).contiguous(memory_format=torch.channels_last))
        w, b = layer.weight.to(dt), None if layer.bias is None else layer.bias.to(dt)
        if add is None:
            return op(x, w, b, *geometry, "relu" if relu else "none", [], "")
        if relu:
            raise ValueError("a fused convolution adds or applies the ReLU, not both")
        return op.binary(x, add.to(dt), w, b, *geometry, "add", None, None, [], None)

    try:
        gen = torch.Generator().manual_seed(0)
        layer = torch.nn.Conv2d(4, 6, 3)
        x, add = torch.randn(2, 4, 5, 7, generator=gen), torch.randn(2, 6, 5, 7, generator=gen)
        with torch.no_grad():
            ref = layer(F.pad(x, (1, 1, 1, 1), mode="replicate"))
            ok = torch.allclose(conv(x, layer, True, None).float(), ref.relu(), atol=0.1)
            ok = ok and torch.allclose(conv(x, layer, False, add).float(), ref + add, atol=0.1)
    except RuntimeError:
        return None
    return conv if ok else None
