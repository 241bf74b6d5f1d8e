"""The installed wheel must carry the shipped weights and their model cards."""

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
    assert any(n.endswith("entry_points.txt") for n in names)
