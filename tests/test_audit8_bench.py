"""The benchmarks and scripts as a user runs them: their help writes nothing, missing data and bad
arguments are one line each (no traceback), found before the work they would waste."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, data: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if data is not None:
        env["NIIV_DATA_DIR"] = data
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode not in (0, None), proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "error" in last, proc.stderr
    for word in words:
        assert word in last, last


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("benchmarks/bench_interactive.py", ["--quick"]),
        ("benchmarks/bench_first_frame.py", []),
        ("benchmarks/bench_inference.py", ["--out", "/tmp/inference.json"]),
        ("benchmarks/bench_confidence.py", []),
        ("benchmarks/bench_batch.py", ["--quick"]),
        ("benchmarks/bench_cancel.py", []),
    ],
)
def test_missing_data_is_one_line_naming_the_variable(script, args, tmp_path):
    one_line_error(run(script, *args, data=str(tmp_path)), "NIIV_DATA_DIR", str(tmp_path))


@pytest.mark.parametrize(
    ("script", "args", "words"),
    [
        ("benchmarks/bench_interactive.py", ["--quick", "--json", "."], ["--json", "folder"]),
        ("benchmarks/bench_confidence.py", ["--cubes", "0"], ["--cubes", "above 0"]),
        ("benchmarks/bench_confidence.py", ["--weights", "no-such-weights"], ["unknown weights"]),
        ("benchmarks/bench_first_frame.py", ["--repeats", "0"], ["--repeats"]),
        ("benchmarks/bench_reconstruct.py", ["--weights", "no-such-weights"], ["unknown weights"]),
        ("benchmarks/bench_reconstruct.py", ["--repeats", "0"], ["--repeats"]),
        ("benchmarks/bench_batch.py", ["--chunks", "x"], ["--chunks"]),
        ("benchmarks/bench_viewer.py", ["--canvas", "0", "0"], ["--canvas"]),
    ],
)
def test_bad_arguments_are_one_line(script, args, words):
    one_line_error(run(script, *args), *words)


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("scripts/train_shipped_weights.py", []),
        ("scripts/train_shipped_weights.py", ["no-such-recipe", "1"]),
        ("scripts/probe_specialist.py", []),
    ],
)
def test_scripts_refuse_missing_arguments_with_usage(script, args):
    proc = run(script, *args)
    one_line_error(proc)
    assert "usage:" in proc.stderr


def test_help_of_the_pictures_script_writes_no_picture(tmp_path):
    """``--help`` used to be ignored: the script ran and replaced the user guide's pictures."""
    pictures = sorted((REPO / "docs" / "images").glob("degradation_*.png"))
    before = {p: p.stat().st_mtime_ns for p in pictures}
    proc = run("scripts/figures_degradations.py", "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in pictures} == before


def test_viewer_benchmark_instruments_the_current_plugin():
    """bench_viewer wraps the plugin's normalisation to time it: the function must exist where it
    wraps it (it moved once, and every run failed at its first view)."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import bench_viewer; "
        "norm = bench_viewer.instrument(); "
        "from napari_niiv._napari import layer_view; import numpy as np; "
        "layer_view.fit_normalisation(np.arange(64, dtype=np.float32).reshape(4, 4, 4)); "
        "print('seconds' in norm)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "True"
