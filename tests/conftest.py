"""Shared fixtures: real data from $NIIV_DATA_DIR (default ../shared/data), tiny models."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_niiv.data import open_volume
from napari_niiv.model import NiivConfig, NiivModel

DATA_DIR = Path(os.environ.get("NIIV_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def data_path(*parts: str) -> Path:
    p = DATA_DIR.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"test data {p} is missing: set NIIV_DATA_DIR to the shared data folder")
    return p


def write_tif(path: Path, data: np.ndarray, **kwargs) -> None:
    """Grey stacks as grey: tifffile would store a 3- or 4-plane uint8 stack as planar RGB."""
    import tifffile

    kwargs.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, data, **kwargs)


@pytest.fixture(scope="session")
def medulla() -> np.ndarray:
    """A 64^3 crop of real isotropic FIB-SEM (uint8)."""
    return np.asarray(open_volume(data_path("fibsem", "medulla_a.tif")).data[:64, :64, :64])


def read_noting(array: np.ndarray, chunks: tuple[int, ...]) -> tuple[object, list[str]]:
    """``array`` as a lazy dask array that notes the name of the thread reading each chunk (with
    dask's synchronous scheduler: the thread that asked for it), and that list."""
    import threading

    import dask.array as da

    readers: list[str] = []

    def noted(block: np.ndarray) -> np.ndarray:
        readers.append(threading.current_thread().name)
        return block

    lazy = da.from_array(array, chunks=chunks).map_blocks(noted, meta=np.empty((0,) * array.ndim, array.dtype))
    return lazy, readers


def random_model(config: NiivConfig | None = None, seed: int = 0) -> NiivModel:
    """A model whose decoder output is not zero, so tests see the whole network at work."""
    torch.manual_seed(seed)
    model = NiivModel(config or NiivConfig())
    torch.nn.init.normal_(model.decoder.net[-1].weight, std=0.05)
    return model.eval()


@pytest.fixture
def model() -> NiivModel:
    return random_model()


TINY = NiivConfig(latent_dim=16, encoder_blocks=1, mlp_hidden=32, mlp_layers=2)


@pytest.fixture
def tiny_user_weights(tmp_path, monkeypatch) -> Path:
    """A user weights folder ($NIIV_WEIGHTS_DIR) holding one tiny alpha-10 model, listed as user/tiny."""
    from napari_niiv.inference.weights import save_weights

    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("NIIV_WEIGHTS_DIR", str(folder))
    save_weights(folder / "tiny.safetensors", random_model(TINY), 10.0, None)
    return folder


@pytest.fixture(scope="module")
def cremi64() -> np.ndarray:
    """Real serial-section TEM, alpha 10: (32, 64, 64) uint8."""
    return np.asarray(open_volume(data_path("anisotropic_em", "cremi_a.tif")).data[:, :64, :64])


def rewrite_weights(good: Path, out: Path, tensors=None, **meta_changes) -> Path:
    """A copy of the weights file ``good`` at ``out`` with its tensors passed through ``tensors``
    and its metadata keys changed (``None``: removed): damaged or lying weights, made on purpose."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    state = tensors(state) if tensors else state
    for key, value in meta_changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    save_file(state, str(out), metadata=meta)
    return out


NAPARI_CHILD_PRELUDE = textwrap.dedent(
    """
    import faulthandler, sys, time
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication

    faulthandler.enable()

    def wait(cond, timeout=120.0):
        t = time.time()
        while time.time() - t < timeout:
            QApplication.processEvents()
            if cond():
                return
            time.sleep(0.01)
        sys.exit("timed out")
    """
)


def run_napari_child(tmp_path: Path, body: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``body`` (a napari script; it has ``wait(cond, timeout)``) in a child Python process with
    ``args`` as its ``sys.argv[1:]``: a segmentation fault there fails one test, not the test run."""
    script = tmp_path / "child.py"
    script.write_text(NAPARI_CHILD_PRELUDE + textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """Real serial-section TEM, (8, 48, 48) uint8, z voxels 10 times the xy voxels."""
    return np.asarray(open_volume(data_path("anisotropic_em", "cremi_a.tif")).data[:8, :48, :48])


class CancelAfter:
    """A ``cancelled`` callable that turns true after ``calls`` questions; ``asked`` counts them."""

    def __init__(self, calls: int) -> None:
        self.calls, self.asked = calls, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked > self.calls


def gui_thread_waits(monkeypatch, job_class) -> list[float | None]:
    """The timeouts of every ``job_class.join`` made on the GUI (main) thread from now on: a window
    that waits for a background job there is frozen."""
    import threading

    waits: list[float | None] = []
    join = job_class.join

    def noted_join(job, timeout: float | None = None) -> bool:
        if threading.current_thread() is threading.main_thread():
            waits.append(timeout)
        return join(job, timeout)

    monkeypatch.setattr(job_class, "join", noted_join)
    return waits


def open_dock(viewer, weights: str | None = None):
    """The niiv dock in ``viewer``, with ``weights`` chosen (the list read again first: user weights
    a test just wrote) when given."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-niiv", "niiv isotropic view")
    if weights is not None:
        widget.weights_choice.reset_choices()
        widget.weights_choice.value = weights
    return widget
