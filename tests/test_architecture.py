"""The package's import layers (pyproject's [tool.importlinter]) hold, and a wrong import breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "napari_niiv"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
LAYERS = "Layers: console > _napari | cli > training > inference > data > model"
GUI = "Only _napari imports the GUI toolkits"

if not LINT_IMPORTS.exists():
    pytest.skip("import-linter is not installed (pip install -e '.[test]')", allow_module_level=True)


def lint_imports(cwd: Path, package_parent: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports with pyproject's contracts on the napari_niiv found in ``package_parent``."""
    env = {**os.environ, "PYTHONPATH": str(package_parent), "NO_COLOR": "1"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_package_keeps_its_layers(tmp_path: Path) -> None:
    res = lint_imports(tmp_path, ROOT / "src")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{LAYERS} KEPT" in res.stdout and f"{GUI} KEPT" in res.stdout


def test_an_upward_import_and_a_gui_import_break_their_contracts(tmp_path: Path) -> None:
    copy = tmp_path / "src" / "napari_niiv"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "model" / "config.py", "a") as f:
        f.write("\nfrom ..training import train  # noqa: E402  the model must not know training\n")
    with open(copy / "data" / "io.py", "a") as f:
        f.write("\nimport napari  # noqa: E402  only _napari may import napari\n")

    res = lint_imports(tmp_path, tmp_path / "src")  # the copy, not src/, is analysed: the real one passes
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "Contracts: 0 kept, 2 broken." in out, out
    broken = out.split("Broken contracts", 1)[1]
    assert f"{LAYERS}\n" in broken and "napari_niiv.model is not allowed to import napari_niiv.training" in broken
    assert "napari_niiv.model.config -> napari_niiv.training" in broken
    assert f"{GUI}\n" in broken and "napari_niiv.data is not allowed to import napari" in broken
    assert "napari_niiv.data.io -> napari" in broken
