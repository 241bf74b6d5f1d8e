"""Pick the compute device and precision: CUDA, then MPS, then CPU; bf16 where the hardware has it."""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import NiivInputError
from ..model.encoder import Conv, ConvWeights, replicate_pad
from ..model.separable import Linear, Parallel, in_turn
from .settings import DEVICES


def keep_triton_out_without_cuda() -> bool:
    """Make ``import triton`` fail in this process when torch is a CUDA build on a machine without
    a CUDA device (PyPI's Linux torch), where triton has nothing to do; True when it did so.

    Triton carries its own LLVM: loaded after Mesa's (napari's OpenGL, software or an Intel or AMD
    GPU's), it crashes the process. torch loads it on first use of ``torch._dynamo``, which every
    optimizer's constructor imports: napari segfaulted as a fine-tuning run started (Python 3.12,
    torch 2.13.0+cu130, Xvfb). torch then takes triton as not installed; ``torch.compile`` still
    runs on the CPU."""
    if "triton" in sys.modules or not torch.version.cuda or torch.cuda.is_available():
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    return True


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
        raise NiivInputError(f"device {name!r} was asked for but torch sees no CUDA GPU here; use 'cpu' or 'auto'")
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


def thread_priority() -> int | None:
    """The calling thread's nice value (Linux), else None: what :func:`lower_thread_priority` sets."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except OSError:
        return None


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
    over the activations fewer per layer). The skip is accumulated into ``add`` itself (oneDNN's
    sum into the destination), which the caller gives up (:data:`~napari_niiv.model.encoder.Conv`):
    for 24 channels that runs at the plain convolution's speed, where adding into a new tensor
    took ~25 % longer. None where it does not apply or does not give F.conv2d's result (checked
    once on a small case)."""
    op = _cpu_onednn_op(device, "_convolution_pointwise")
    into = _cpu_onednn_op(device, "_convolution_pointwise_")
    if op is None or into is None:
        return None
    dt = dtype or torch.float32
    geometry = ([0, 0], [1, 1], [1, 1], 1)  # padding (done by replicate_pad), stride, dilation, groups

    def conv(x: torch.Tensor, layer: nn.Conv2d | ConvWeights, relu: bool, add: torch.Tensor | None) -> torch.Tensor:
        x = replicate_pad(x.to(dt).contiguous(memory_format=torch.channels_last))
        w, b = layer.weight.to(dt), None if layer.bias is None else layer.bias.to(dt)
        if add is None:
            return op(x, w, b, *geometry, "relu" if relu else "none", [], "")
        if relu:
            raise ValueError("a fused convolution adds or applies the ReLU, not both")
        into_add = add.to(dt).contiguous(memory_format=torch.channels_last)
        return into.binary(into_add, x, w, b, *geometry, "add", None, None, [], None)

    try:
        gen = torch.Generator().manual_seed(0)
        layer = torch.nn.Conv2d(4, 6, 3)
        x, add = torch.randn(2, 4, 5, 7, generator=gen), torch.randn(2, 6, 5, 7, generator=gen)
        with torch.no_grad():
            ref = layer(F.pad(x, (1, 1, 1, 1), mode="replicate"))
            ok = torch.allclose(conv(x, layer, True, None).float(), ref.relu(), atol=0.1)
            ok = ok and torch.allclose(conv(x, layer, False, add.clone()).float(), ref + add, atol=0.1)
    except RuntimeError:
        return None
    return conv if ok else None


@functools.cache
def _omp_set_num_threads() -> Callable[[int], None] | None:
    """``omp_set_num_threads`` of the OpenMP runtime torch ships (libgomp on Linux, libomp on macOS,
    libiomp5md on Windows; in ``torch/lib``, or ``torch.libs`` beside it in some wheels), or None
    where none is found. It sets the team size of the calling thread alone; ``torch.set_num_threads``
    would also change the count that every thread started later takes (torch keeps it process-wide)."""
    here = Path(torch.__file__).parent
    for folder in (here / "lib", here.parent / "torch.libs"):
        for pattern in ("libgomp*.so*", "libomp*.so*", "libomp*.dylib", "libiomp5md.dll"):
            for path in sorted(folder.glob(pattern)):
                try:
                    return ctypes.CDLL(str(path)).omp_set_num_threads
                except (OSError, AttributeError):
                    continue
    return None


class CoreWorkers:
    """Threads that each run their operations on one torch thread: for many small independent
    pieces of work, such as the runs of rows of separable decoding (a 1080p view has ~135, of a
    dozen operations each). A call uses as many workers as its caller has torch threads.

    Split across torch's OpenMP threads instead, every operation wakes the other threads and waits
    for them; with torch's threads told not to spin (``OMP_WAIT_POLICY=PASSIVE``, which napari_niiv
    sets so that they leave the cores to other work when idle) those wake-ups cost ~20 % of a
    1080p niiv-fast frame on a 2-core CPU. Here each worker keeps its own run's activations in its
    core's cache, and a worker slowed by other work on its core only leaves more runs to the
    other. Workers take their caller's priority (:func:`lower_thread_priority`: background work
    stays behind napari's GUI thread).
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="niiv-core", initializer=self._one_thread)
        self._ready = threading.Barrier(threads)
        self.ok = all(f.result() for f in [self._pool.submit(self._check) for _ in range(threads)])

    @staticmethod
    def _one_thread() -> None:
        torch.get_num_threads()  # torch sets a new thread's team size at its first use: now, not later
        set_threads = _omp_set_num_threads()
        if set_threads is not None:
            set_threads(1)

    def _check(self) -> bool:
        """True on a worker that computes on one thread (each worker runs one check: they wait
        for each other)."""
        try:
            self._ready.wait(timeout=10)
        except threading.BrokenBarrierError:
            return False
        return torch.get_num_threads() == 1

    def __call__(self, fn: Callable[[Any], None], items: Sequence[Any]) -> None:
        """``fn(item)`` for every item, on as many workers as the caller has torch threads, each
        taking the next item as it is free; the caller's grad and inference modes and priority hold
        on the workers too. The first error (or an interrupt of the caller) stops the items not yet
        taken; the call returns when no worker still runs one, and raises that error. Called from a
        worker itself (``fn`` asking for more pieces), the pieces run in turn there: waiting for
        the others could deadlock."""
        workers = min(self.threads, torch.get_num_threads(), len(items))
        if workers < 2 or getattr(_on_worker, "active", False):
            in_turn(fn, items)
            return
        inference, grad, nice = torch.is_inference_mode_enabled(), torch.is_grad_enabled(), thread_priority()
        todo, lock, failed = iter(items), threading.Lock(), threading.Event()

        def work() -> None:
            _on_worker.active = True
            if nice is not None:  # the caller's (back up to a higher one only where allowed)
                lower_thread_priority(nice)
            try:
                with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                    while not failed.is_set():
                        with lock:
                            item = next(todo, todo)
                        if item is todo:
                            return
                        fn(item)
            except BaseException:
                failed.set()
                raise
            finally:
                _on_worker.active = False

        futures = []
        for _ in range(workers):
            try:
                futures.append(self._pool.submit(work))
            except RuntimeError:  # the interpreter is shutting down: no new threads
                break
        if not futures:
            work()
        try:
            for future in futures:
                future.exception()  # all finished: no worker still writes the caller's output
        except BaseException:  # interrupted while waiting: the workers take no more items
            failed.set()
            for future in futures:
                future.exception()
            raise
        for future in futures:
            future.result()


_on_worker = threading.local()
_core_workers: CoreWorkers | None = None
_core_lock = threading.Lock()


def _forget_core_workers() -> None:
    """In a forked child: the parent's workers are not there (threads do not survive a fork)."""
    global _core_workers, _core_lock
    _core_workers, _core_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_core_workers)


def core_workers(device: torch.device) -> Parallel | None:
    """The process's :class:`CoreWorkers` for a CPU engine whose thread has at least two torch
    threads (one worker per CPU, made at the first call; each call uses as many as its caller has
    torch threads); None on other devices, with one thread, or where a worker could not be limited
    to one thread (no OpenMP runtime found: callers then run their pieces in turn)."""
    global _core_workers
    if device.type != "cpu" or torch.get_num_threads() < 2:
        return None
    with _core_lock:
        if _core_workers is None:
            _core_workers = CoreWorkers(max(2, os.cpu_count() or 2))
        return _core_workers if _core_workers.ok else None
