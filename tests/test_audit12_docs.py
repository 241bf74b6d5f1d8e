"""Audit 12 (docs): what README.md's "Python" section and docs/user-guide.md tell a new user holds.

The README's Python snippet is run as written (only its file name swapped for a tiny real volume),
the defaults the guide states are compared with the parser's and the library's, and the guide's
claim that niiv-em told ``psf`` gives exactly its ``thick`` output is checked on real data.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from napari_niiv.cli import build_parser
from napari_niiv.data import open_volume
from napari_niiv.inference.settings import InferenceSettings

from .conftest import data_path, write_tif

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "user-guide.md"


def _python_section_code() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "README's Python section should hold one python block"
    return blocks[0]


@pytest.fixture(scope="module")
def cremi_tif(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 3 x 40 x 40 crop of real serial-section TEM, saved as an ImageJ TIFF whose voxel sizes say
    alpha 8 (32 nm sections, 4 nm pixels): the snippet's alpha."""
    crop = np.asarray(open_volume(data_path("anisotropic_em", "cremi_a.tif")).data[:3, :40, :40])
    path = tmp_path_factory.mktemp("docs") / "stack.tif"
    write_tif(path, crop, imagej=True, resolution=(1 / 4, 1 / 4), metadata={"spacing": 32, "unit": "nm", "axes": "ZYX"})
    return path, crop


def test_readme_python_snippet_runs_as_written(cremi_tif: tuple[Path, np.ndarray]) -> None:
    """The snippet's names resolve and ``iso`` is what its comment says: a float32 numpy array, in
    the input's intensities, alpha times as many planes."""
    path, crop = cremi_tif
    code = _python_section_code()
    assert '"stack.tif"' in code
    scope: dict = {}
    exec(compile(code.replace('"stack.tif"', repr(str(path))), "README.md", "exec"), scope)
    iso = scope["iso"]
    assert isinstance(iso, np.ndarray) and iso.dtype == np.float32
    assert iso.shape == (3 * 8, 40, 40)
    assert np.isfinite(iso).all()
    # in the input's grey levels, not normalised to 0..1
    assert abs(float(iso.mean()) - float(crop.mean())) < 0.1 * float(crop.mean())
    assert float(iso.max()) > 50


def _sub(command: str):
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(getattr(a, "choices", None), dict)).choices
    return subs[command]


def test_guide_defaults_are_the_real_defaults() -> None:
    """Each default the guide states is the one the command line and the library use."""
    from napari_niiv.inference.store import Layout
    from napari_niiv.inference.weights import USER_DIR_ENV
    from napari_niiv.training.train import TrainSettings, fine_tune_settings

    guide = GUIDE.read_text(encoding="utf-8")
    rec, tr, ev = _sub("reconstruct"), _sub("train"), _sub("evaluate")

    assert "`niiv reconstruct`'s default, see niiv-em's card" in guide
    assert rec.get_default("orientation") == "both"
    assert "`auto`, the Python API's default" in guide  # and README's snippet comment
    python_default = InferenceSettings(alpha=8)
    assert python_default.orientation == "auto" and python_default.volume_orientation == "xz"
    assert "`--chunks z,y,x`, default 64,256,256" in guide
    assert Layout.__dataclass_fields__["chunks"].default == (64, 256, 256)
    assert "**NGFF 0.5 on zarr v3** by default" in guide
    assert Layout.__dataclass_fields__["ngff"].default == "0.5"
    assert "`--precision auto` (the default)" in guide
    assert rec.get_default("precision") == "auto"
    assert "`thick` (the default)" in guide
    assert tr.get_default("degradation") == "thick" and ev.get_default("degradation") == "thick"

    assert "every `--checkpoint-every` steps (250)" in guide
    assert tr.get_default("checkpoint_every") == 250
    assert "random 64x64 crops" in guide and tr.get_default("crop") == 64
    assert "(learning rate 1e-4, 20 warm-up steps)" in guide
    fine = fine_tune_settings(8.0)
    assert fine.lr == pytest.approx(1e-4) and fine.warmup == 20
    assert TrainSettings().lr != fine.lr  # the guide's "then uses the fine-tuning defaults" means a change
    assert "`$NIIV_WEIGHTS_DIR`" in guide and USER_DIR_ENV == "NIIV_WEIGHTS_DIR"

    assert "default `thick`: the" in guide  # evaluate
    assert ev.get_default("slices") == "xz" and ev.get_default("cube") == 128


def test_niiv_em_told_psf_gives_its_thick_output() -> None:
    """The guide: 'told `psf` it gives exactly its `thick` output' (fp32, real serial-section TEM)."""
    from napari_niiv.inference.reconstructor import reconstruct_volume
    from napari_niiv.inference.weights import load_weights, resolve_weights

    model = load_weights(resolve_weights("niiv-em")).model
    vol = np.asarray(open_volume(data_path("anisotropic_em", "cremi_a.tif")).data[:3, :40, :40])
    out = {
        d: reconstruct_volume(
            model, vol, InferenceSettings(alpha=10, orientation="xz", precision="fp32", device="cpu", degradation=d)
        )
        for d in ("thick", "psf", "thin")
    }
    np.testing.assert_array_equal(out["psf"], out["thick"])
    assert not np.array_equal(out["thin"], out["thick"])  # the embedding is told, so the check can fail
