"""PyPI's Linux torch is a CUDA build carrying triton, whose LLVM crashes a process that loaded
Mesa's (napari's OpenGL) first: with no CUDA device, the plugin makes ``import triton`` fail
instead (``devices.keep_triton_out_without_cuda``). Seen on Python 3.12 with torch 2.13.0+cu130
under Xvfb: napari segfaulted as a fine-tuning run's optimizer imported torch._dynamo."""

from __future__ import annotations

import sys

import pytest
import torch

from napari_niiv.inference.devices import keep_triton_out_without_cuda


def test_a_cuda_build_without_a_cuda_device_keeps_triton_out_and_torch_still_trains(monkeypatch) -> None:
    if "triton" in sys.modules:
        pytest.skip("triton is already loaded in this process")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "triton", None)  # so that it is absent again afterwards
    del sys.modules["triton"]
    assert keep_triton_out_without_cuda()
    with pytest.raises(ImportError):
        import triton  # noqa: F401
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters())  # imports torch._dynamo
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    assert not keep_triton_out_without_cuda()  # once is enough


@pytest.mark.parametrize(("cuda", "device"), [(None, False), ("13.0", True)], ids=["cpu build", "cuda device"])
def test_a_cpu_build_or_a_cuda_device_leaves_triton_alone(monkeypatch, cuda, device) -> None:
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: device)
    monkeypatch.setitem(sys.modules, "triton", None)
    del sys.modules["triton"]
    assert not keep_triton_out_without_cuda()
    assert "triton" not in sys.modules
