"""docs/tutorial.ipynb runs top to bottom in a fresh kernel on the shared FIB-SEM cube, napari cell
included (under pytest-xvfb's display), and shows what its text says it shows."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import data_path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def _table(text: str) -> dict[str, float]:
    """method -> CF-PSNR from a format_table() printout."""
    rows = re.findall(r"^\| ([^|]+?) \| ([\d.]+) \|", text, flags=re.MULTILINE)
    return {name: float(value) for name, value in rows}


@pytest.mark.slow
def test_tutorial_runs_without_errors(tmp_path, monkeypatch) -> None:
    data_dir = data_path("fibsem", "medulla_b.tif").parents[1]
    monkeypatch.setenv("NIIV_DATA_DIR", str(data_dir))  # the kernel inherits the environment
    monkeypatch.setenv("NIIV_WEIGHTS_DIR", str(tmp_path / "weights"))  # no user weights of this machine
    # One torch thread in the kernel: on shared CI cores, spinning OpenMP threads made it 3x slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError at the first failing cell
    seconds = time.perf_counter() - t0
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert all(c.execution_count for c in code), "a code cell did not run"

    text = "\n".join(_text(c) for c in code)
    assert "(48, 64, 64) uint8" in text and "(6, 64, 64) float32" in text
    assert "equal to the same part of the whole: True" in text
    shipped = _table(next(_text(c) for c in code if "niiv-em (default)" in _text(c)))
    assert set(shipped) == {"bilinear", "bicubic", "niiv-em (default)"}
    assert shipped["niiv-em (default)"] > shipped["bicubic"] > shipped["bilinear"]
    tuned = _table(next(_text(c) for c in code if "niiv fine-tuned" in _text(c)))
    assert tuned["niiv fine-tuned"] > tuned["bilinear"]
    assert re.search(r"^10 steps in [\d.]+ s", text, flags=re.MULTILINE)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), "no xz picture"
    if os.environ.get("DISPLAY"):  # pytest-xvfb provides one: the napari cell must really run
        assert "no display here" not in text
        for layer in ("isotropic truth", "pooled x8", "niiv"):
            assert re.search(rf"^{layer} +shape", text, flags=re.MULTILINE), layer
        assert "scale [80.0, 10.0, 10.0]  translate [35.0, 0.0, 0.0]" in text
    print(f"tutorial ran in {seconds:.1f} s")
