"""The installed wheel must carry the shipped weights, their model cards and the napari manifest."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_weights_and_cards(tmp_path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("napari_niiv-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in (ROOT / "weights").glob("*.safetensors"))
    assert shipped, "no shipped weights in weights/"
    for name in shipped:
        assert f"napari_niiv/weights/{name}" in names
        assert f"napari_niiv/weights/{Path(name).stem}.md" in names
    assert "napari_niiv/cli.py" in names
    zf = zipfile.ZipFile(wheel)
    manifest = zf.read("napari_niiv/napari.yaml").decode()  # a file, not the repo's symlink
    assert manifest == (ROOT / "napari.yaml").read_text()
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    assert "napari-niiv = napari_niiv:napari.yaml" in zf.read(entry_points).decode()
