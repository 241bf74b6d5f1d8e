"""What a user installs: the wheel and sdist carry the licence, the type marker, the napari manifest
(a real file) and the shipped weights with their cards; the wheel installs into a fresh venv, where
napari finds the plugin through npe2 and `npe2 validate` accepts it; the metadata says what PyPI
and the napari hub show. Also the user folders, which follow the platform's conventions."""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

import napari_niiv
from napari_niiv.inference.engine import inductor_cache_dir
from napari_niiv.inference.weights import user_dir

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "src" / "napari_niiv" / "napari.yaml"
REPO_URL = "https://github.com/napari-niiv/napari-niiv"


def _shipped_weights() -> list[str]:
    names = sorted(p.name for p in (ROOT / "weights").glob("*.safetensors"))
    assert names, "no shipped weights in weights/"
    return names


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """The wheel and the sdist, built from this checkout with the installed hatchling (no network)."""
    out = tmp_path_factory.mktemp("dist")
    try:
        import build  # noqa: F401

        cmd = [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "-o", str(out), str(ROOT)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except ImportError:  # hatchling alone (the test extra has build; a bare checkout may not)
        subprocess.run([sys.executable, "-m", "hatchling", "build", "-d", str(out)], cwd=ROOT, check=True)
    (wheel,) = out.glob("napari_niiv-*.whl")
    (sdist,) = out.glob("napari_niiv-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.mark.slow
def test_wheel_carries_licence_manifest_weights_and_cards(dists) -> None:
    zf = zipfile.ZipFile(dists["wheel"])
    infos = {i.filename: i for i in zf.infolist()}
    version = napari_niiv.__version__
    assert f"napari_niiv-{version}-" in dists["wheel"].name
    assert zf.read(f"napari_niiv-{version}.dist-info/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    assert "napari_niiv/py.typed" in infos and "napari_niiv/icon.png" in infos
    assert "napari_niiv/cli.py" in infos
    for name in _shipped_weights():
        assert zf.read(f"napari_niiv/weights/{name}") == (ROOT / "weights" / name).read_bytes()
        assert f"napari_niiv/weights/{Path(name).stem}.md" in infos
    manifest = infos["napari_niiv/napari.yaml"]
    assert not stat.S_ISLNK(manifest.external_attr >> 16), "napari.yaml is a symlink in the wheel"
    assert zf.read(manifest).decode() == MANIFEST.read_text()
    (entry_points,) = [n for n in infos if n.endswith(".dist-info/entry_points.txt")]
    text = zf.read(entry_points).decode()
    assert "napari-niiv = napari_niiv:napari.yaml" in text
    assert "niiv = napari_niiv.console:main" in text


@pytest.mark.slow
def test_sdist_carries_licence_manifest_and_weights(dists) -> None:
    with tarfile.open(dists["sdist"]) as tf:
        top = tf.getnames()[0].split("/")[0]
        members = {m.name.removeprefix(top + "/"): m for m in tf.getmembers()}
        assert tf.extractfile(members["LICENSE"]).read() == (ROOT / "LICENSE").read_bytes()
        assert members["src/napari_niiv/py.typed"].isfile()
        manifest = members["src/napari_niiv/napari.yaml"]
        assert manifest.isfile(), f"napari.yaml in the sdist is not a file (a link to {manifest.linkname!r})"
        assert tf.extractfile(manifest).read().decode() == MANIFEST.read_text()
        for name in _shipped_weights():
            assert members[f"weights/{name}"].isfile()
            assert members[f"weights/{Path(name).stem}.md"].isfile()
        assert "pyproject.toml" in members and "README.md" in members


@pytest.mark.slow
def test_wheel_metadata_for_pypi_and_the_napari_hub(dists) -> None:
    zf = zipfile.ZipFile(dists["wheel"])
    (path,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
    meta = email.parser.Parser().parsestr(zf.read(path).decode())
    assert meta["Name"] == "napari-niiv"
    assert meta["Version"] == napari_niiv.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert urls == {
        "Homepage": REPO_URL,
        "Source": REPO_URL,
        "Issues": f"{REPO_URL}/issues",
        "Documentation": f"{REPO_URL}/tree/main/docs",
    }
    classifiers = set(meta.get_all("Classifier"))
    requires_python = meta["Requires-Python"]
    assert requires_python == ">=3.11"
    for c in (
        "Framework :: napari",
        "Operating System :: OS Independent",
        "Typing :: Typed",
        "Intended Audience :: Science/Research",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ):
        assert c in classifiers, c
    # Versions claimed are versions allowed: none below requires-python.
    for c in classifiers:
        if m := re.fullmatch(r"Programming Language :: Python :: 3\.(\d+)", c):
            assert int(m.group(1)) >= 11, c
    # PEP 639 deprecates licence classifiers once License-Expression is given.
    assert not [c for c in classifiers if c.startswith("License ::")]
    extras = set(meta.get_all("Provides-Extra"))
    assert {"all", "napari", "bioio", "s3", "test"} <= extras
    requires = meta.get_all("Requires-Dist")
    runtime = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("platformdirs") for r in runtime)
    assert not any(r.startswith("superqt") for r in requires), "superqt is not imported anywhere"
    for tool in ("pytest", "ruff", "hatchling", "import-linter", "nbclient"):  # dev tools: never for users
        for extra in ("all", "napari", "bioio", "s3"):
            assert not [r for r in requires if r.startswith(tool) and f"extra == '{extra}'" in r], (tool, extra)
    assert any(r.startswith("napari[pyqt6]") and "extra == 'all'" in r for r in requires)
    for reader in ("bioio", "bioio-ome-tiff", "bioio-czi", "bioio-nd2", "bioio-lif"):
        assert any(re.match(rf"{reader}\b(?!-)", r) and "extra == 'bioio'" in r for r in requires), reader


def test_one_version_source() -> None:
    """pyproject.toml takes the version from __init__.py (hatch), so the two cannot disagree."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "src/napari_niiv/__init__.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+|\.dev\d+)?", napari_niiv.__version__)


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_napari_finds_the_plugin(dists, tmp_path) -> None:
    """The wheel alone (no source checkout on the path) imports, runs `niiv`, and is a valid npe2
    plugin; its dependencies are borrowed from this venv through a .pth file, so no network."""
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-index", str(dists["wheel"])], check=True)
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_borrowed_dependencies.pth").write_text("\n".join(sorted(here)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    # Run from tmp_path: the checkout's src/ must not be what gets imported.
    check = textwrap.dedent(
        f"""
        import importlib.metadata as md
        from pathlib import Path
        import napari_niiv
        assert Path(napari_niiv.__file__).resolve().is_relative_to(Path({str(site)!r}).resolve()), napari_niiv.__file__
        assert napari_niiv.__version__ == md.version("napari-niiv") == {napari_niiv.__version__!r}
        from napari_niiv.inference.weights import available_weights, shipped_dir
        assert shipped_dir().resolve().is_relative_to(Path({str(site)!r}).resolve()), shipped_dir()
        assert "niiv-v2-fibsem-a8" in available_weights()
        import npe2
        pm = npe2.PluginManager.instance()
        pm.discover()
        manifest = pm.get_manifest("napari-niiv")
        assert manifest.package_metadata.version == napari_niiv.__version__
        assert {{c.id for c in manifest.contributions.commands}} >= {{"napari-niiv.widget", "napari-niiv.get_reader"}}
        assert manifest.contributions.readers and manifest.contributions.writers and manifest.contributions.widgets
        print("ok", napari_niiv.__version__)
        """
    )
    result = subprocess.run([str(python), "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok {napari_niiv.__version__}"
    niiv = shutil.which("niiv", path=str(bindir))
    assert niiv, "the wheel installed no `niiv` command"
    version = subprocess.run([niiv, "--version"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert version.stdout.strip() == f"napari-niiv {napari_niiv.__version__}", version.stderr
    validate = subprocess.run(
        [str(python), "-m", "npe2", "validate", "napari-niiv", "--imports"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert "Manifest for 'niiv isotropic reconstruction' valid!" in validate.stdout, validate.stdout


def test_user_weights_follow_env_then_platform(tmp_path, monkeypatch) -> None:
    import platformdirs

    monkeypatch.setenv("NIIV_WEIGHTS_DIR", str(tmp_path / "mine"))
    assert user_dir() == tmp_path / "mine"
    monkeypatch.delenv("NIIV_WEIGHTS_DIR")
    assert user_dir() == Path(platformdirs.user_data_dir("napari-niiv", appauthor=False)) / "weights"
    if sys.platform.startswith("linux"):  # platformdirs follows the XDG variables there
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
        assert user_dir() == tmp_path / "data" / "napari-niiv" / "weights"


def test_inductor_cache_keeps_the_users_setting_else_platform(tmp_path, monkeypatch) -> None:
    import platformdirs

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "theirs"))
    assert inductor_cache_dir() == tmp_path / "theirs"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    expected = Path(platformdirs.user_cache_dir("napari-niiv", appauthor=False)) / "torchinductor"
    assert inductor_cache_dir() == expected
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(expected)  # torch reads it from there
    if sys.platform.startswith("linux"):
        assert expected == tmp_path / "cache" / "napari-niiv" / "torchinductor"


def test_the_manifest_icon_is_a_packaged_square_png() -> None:
    import importlib.resources

    import yaml
    from PIL import Image

    icon = yaml.safe_load(MANIFEST.read_text())["icon"]
    package, resource = icon.split(":")
    path = importlib.resources.files(package) / resource
    with Image.open(str(path)) as img:
        assert img.format == "PNG" and img.size[0] == img.size[1] >= 128


def test_an_older_napari_is_refused_saying_what_to_do() -> None:
    """napari's plugin manager installs no extras, so the `napari>=0.9` bound does not apply there:
    with napari 0.6-0.8 the live view failed inside Qt callbacks (no viewer.scene). Loading the
    plugin's napari side now fails at once with what to do."""
    pytest.importorskip("napari")
    code = textwrap.dedent(
        """
        import napari
        napari.__version__ = "0.8.4"
        try:
            import napari_niiv._napari
        except ImportError as e:
            print(e)
        """
    )
    said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "needs napari 0.9 or newer, and this is napari 0.8.4" in said and 'pip install -U "napari>=0.9"' in said
    from napari_niiv._napari import check_napari

    for version in ["0.9.0", "0.9.2", "0.10.0", "1.0.0rc1"]:
        check_napari(version)
    with pytest.raises(ImportError, match=r"napari 0\.6\.6"):
        check_napari("0.6.6")
