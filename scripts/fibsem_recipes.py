"""What the FIB-SEM training scripts share: the data split and niiv-em's recipe, so that
``compare_alpha_schedules.py`` varies niiv-em's own settings (``train_shipped_weights.py em``)
rather than a copy of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_niiv.data import open_volume

# medulla_a z 74-250 and medulla_b z 0-112 train; medulla_a z 0-64 monitors; medulla_b z 122-250 is the test.
FIBSEM_Z_RANGES = [(74, 250), (0, 112)]
FIBSEM_SPLIT = {
    "training_data": "medulla_a z 74-250, medulla_b z 0-112 (xy planes)",
    "validation_data": "medulla_a z 0-64, y 0-128, x 0-128",
    "test_data": "medulla_b z 122-250 (never seen in training)",
}
# niiv-em: continued from EM_INIT over alpha 2-12 with thick and thin sections mixed.
EM_INIT = "niiv-v1-fibsem-a8"
EM_RECIPE: dict[str, Any] = dict(
    alpha=2.0,
    alpha_max=12.0,
    degradations="thick,thin",
    architecture="v1",
    lr=2e-4,
    warmup=100,
    eval_every=1000,
    seed=1,
)


def budget(minutes: float, threads: int) -> dict[str, Any]:
    """The TrainSettings every script's run shares: a time budget instead of a step count."""
    return dict(steps=1_000_000, time_budget=minutes * 60, threads=threads, checkpoint_every=250, preview_every=0)


def fibsem_volumes(data: Path) -> list[Any]:
    """medulla_a and medulla_b, in the order of :data:`FIBSEM_Z_RANGES`."""
    return [open_volume(data / "fibsem" / "medulla_a.tif"), open_volume(data / "fibsem" / "medulla_b.tif")]
