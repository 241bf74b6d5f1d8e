"""A user who installs the wheel (audit 11, fresh install): what PyPI shows of the README, and the
samples of File > Open Sample on a machine with no network or a changed download.

- PyPI renders README.md as the project page, where links relative to the repository (docs/...,
  weights/..., the images) lead nowhere: every link and image must be an absolute URL, and those into
  the project's repository (pyproject's [project.urls] Source) must name files and headings that exist.
- The EPFL sample was downloaded and shown unchecked; a download or cached copy that is not a 3D 8-bit
  TIFF (truncated, an error page) is now refused and dropped from the cache. It is not pinned by a hash:
  the shared copy is most likely a crop of the served file (see sample_data.EPFL_URL).
- Without a network the samples said "HTTPSConnectionPool(host=..., port=443): Max retries exceeded
  with url: /janelia-flyem/neuroproo": now the host and the reason ("Name or service not known").
"""

from __future__ import annotations

import re
import shutil
import socket
import threading
import tomllib
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from napari_niiv._napari import sample_data
from napari_niiv.errors import NiivInputError

from .conftest import data_path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MANIFEST = ROOT / "src" / "napari_niiv" / "napari.yaml"
EPFL_FILE = ("anisotropic_em", "epfl_hippocampus.tif")


def _repo_url() -> str:
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    return urls["Source"].rstrip("/")


def _links(markdown: str) -> list[tuple[bool, str]]:
    """(is an image, target) of every Markdown link and image, and of HTML src= / href=."""
    found = [(bang == "!", target) for bang, target in re.findall(r"(!?)\[[^\]]*\]\(\s*<?([^)\s>]+)", markdown)]
    found += [(attr == "src", target) for attr, target in re.findall(r"\b(src|href)=[\"']([^\"']+)", markdown)]
    found += [(False, target) for target in re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", markdown, flags=re.M)]
    return found


def _github_slug(heading: str) -> str:
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(markdown: Path) -> set[str]:
    return {_github_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown.read_text(), flags=re.M)}


def test_readme_links_and_images_work_on_pypi() -> None:
    repo = _repo_url()
    raw = repo.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    links = _links(README.read_text())
    assert len(links) >= 15, links  # the parser sees the README's links
    relative = [t for _, t in links if not re.match(r"https?://", t)]
    assert not relative, f"relative links break on PyPI's project page: {relative}"
    for image, target in links:
        url, _, anchor = target.partition("#")
        if image:  # PyPI shows an image only from a URL that serves the file itself
            assert not url.startswith(f"{repo}/blob/"), f"{target}: a blob page is HTML, not the picture"
        if url.startswith(raw):
            path = url.removeprefix(raw)
        elif url.startswith(f"{repo}/blob/main/") or url.startswith(f"{repo}/tree/main/"):
            path = url.split("/main/", 1)[1]
        else:
            continue  # another site (pytorch.org, bioio)
        assert (ROOT / path).exists(), f"{target}: no {path} in the repository"
        if anchor:
            assert anchor in _anchors(ROOT / path), f"{target}: {path} has no heading #{anchor}"


def test_every_manifest_sample_is_a_function_here() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    samples = manifest["contributions"]["sample_data"]
    assert {s["key"] for s in samples} == {"fibsem_anisotropic", "epfl_hippocampus"}
    for sample in samples:
        module, _, name = commands[sample["command"]].partition(":")
        assert module == "napari_niiv._napari.sample_data" and callable(getattr(sample_data, name))


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served_epfl(tmp_path: Path, monkeypatch):
    """The EPFL crop served on 127.0.0.1 as test_8.tif, a fresh pooch cache, no NIIV_DATA_DIR."""
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(data_path(*EPFL_FILE), served / "test_8.tif")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(sample_data, "EPFL_URL", f"http://127.0.0.1:{server.server_port}/test_8.tif")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # pooch.os_cache follows it
    monkeypatch.delenv("NIIV_DATA_DIR", raising=False)
    try:
        yield served / "test_8.tif", tmp_path / "cache" / "napari-niiv"
    finally:
        server.shutdown()
        server.server_close()


def test_epfl_download_is_checked_and_a_damaged_file_dropped(served_epfl) -> None:
    served, cache = served_epfl
    [(data, meta, kind)] = sample_data.epfl_hippocampus()
    assert kind == "image" and data.shape == (32, 256, 256) and meta["scale"] == (40.0, 5.0, 5.0)
    [cached] = cache.glob("*test_8.tif")
    assert meta["metadata"]["niiv_source"] == str(cached)
    np.testing.assert_array_equal(data, tifffile.imread(served))

    # the cached copy is checked each time: a truncated file is refused, and deleted
    cached.write_bytes(cached.read_bytes()[:5000])
    with pytest.raises(NiivInputError, match=r"not a 3D 8-bit TIFF .*deleted.*NIIV_DATA_DIR"):
        sample_data.epfl_hippocampus()
    assert not cached.exists()

    # a server that now serves something else (here: not even a TIFF) is refused the same way
    served.write_bytes(b"<html>moved</html>")
    with pytest.raises(NiivInputError, match=r"not a 3D 8-bit TIFF"):
        sample_data.epfl_hippocampus()
    assert not list(cache.glob("*test_8.tif"))


def test_without_a_network_the_sample_names_the_host_and_the_reason(monkeypatch, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on: "Connection refused", as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(sample_data, "EPFL_URL", f"http://127.0.0.1:{port}/test_8.tif")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NIIV_DATA_DIR", raising=False)
    with pytest.raises(NiivInputError) as caught:
        sample_data.epfl_hippocampus()
    said = str(caught.value)
    assert said.startswith(f"the sample could not be downloaded from 127.0.0.1:{port} (ConnectionError: ")
    assert "refused" in said.lower(), said
    assert "ConnectionPool" not in said and "Max retries" not in said, said  # urllib3's wording, cut mid-URL
    assert said.endswith("point NIIV_DATA_DIR at a folder holding anisotropic_em/epfl_hippocampus.tif")
