"""The OME-Zarr store niiv writes: NGFF 0.5 on zarr v3 by default, valid by ome-zarr-models, opened by
ome-zarr-py and napari-ome-zarr where geometry.py puts it; NGFF 0.4 on zarr v2 still round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_niiv.data.io import open_volume
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.geometry import output_geometry
from napari_niiv.inference.store import ArrayBlocks, Layout, partial_path, validate_store, write_ome_zarr

# 40 nm sections of 4 nm pixels at alpha 10, input voxel 0 centred at z = 100 nm: the output's
# first voxel centre is 100 - 20 + 2 = 82 nm (geometry.py's pixel-centre convention).
GEOMETRY = output_geometry((3, 24, 20), 10.0, voxel_size=(40.0, 4.0, 4.0), translation=(100.0, 0.0, 8.0), unit="nm")


def iso_volume() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 60000, GEOMETRY.size).astype(np.uint16)


def write(path: Path, data: np.ndarray, **options) -> Path:
    g = GEOMETRY
    layout = Layout(g.size, data.dtype, (16, 16, 16), g.voxel_size, g.unit, g.translation, 3, "em", **options)
    return write_ome_zarr(path, layout, ArrayBlocks(data)).path


def test_ngff05_is_zarr_v3_valid_by_ome_zarr_models(tmp_path: Path) -> None:
    from ome_zarr_models.v05.image import Image

    path = write(tmp_path / "iso.ome.zarr", iso_volume(), contrast=(100.0, 50000.0))
    model = validate_store(path)
    assert isinstance(model, Image)
    group = json.loads((path / "zarr.json").read_text())
    assert group["zarr_format"] == 3 and not (path / ".zattrs").exists()
    ome = group["attributes"]["ome"]
    assert ome["version"] == "0.5"
    [ms] = ome["multiscales"]
    assert ms["type"] == "local_mean" and [a["unit"] for a in ms["axes"]] == ["nanometer"] * 3
    for level, dataset in enumerate(ms["datasets"]):
        array = json.loads((path / dataset["path"] / "zarr.json").read_text())
        assert array["dimension_names"] == ["z", "y", "x"]
        transforms = {t["type"]: t[t["type"]] for t in dataset["coordinateTransformations"]}
        voxel, shift = GEOMETRY.level(level)
        assert transforms["scale"] == pytest.approx(voxel) and transforms["translation"] == pytest.approx(shift)
    assert ms["datasets"][0]["coordinateTransformations"][1]["translation"] == pytest.approx([82.0, 0.0, 8.0])
    [channel] = ome["omero"]["channels"]
    assert channel["window"] == {"start": 100.0, "end": 50000.0, "min": 0.0, "max": 65535.0}


def test_ome_zarr_models_rejects_what_is_not_ngff(tmp_path: Path) -> None:
    """The validation the store relies on is real: an array without dimension names fails it."""
    path = write(tmp_path / "iso.ome.zarr", iso_volume())
    meta = json.loads((path / "1" / "zarr.json").read_text())
    del meta["dimension_names"]
    (path / "1" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="dimension_names"):
        validate_store(path)


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
def test_ome_zarr_py_reads_scale_translation_unit_and_window(tmp_path: Path, ngff: str) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    data = iso_volume()
    path = write(tmp_path / "iso.ome.zarr", data, ngff=ngff, contrast=(100.0, 50000.0))
    [node, *_] = list(Reader(parse_url(str(path)))())
    assert [a["unit"] for a in node.metadata["axes"]] == ["nanometer"] * 3
    for level, transforms in enumerate(node.metadata["coordinateTransformations"]):
        by_type = {t["type"]: t[t["type"]] for t in transforms}
        voxel, shift = GEOMETRY.level(level)
        assert by_type["scale"] == pytest.approx(voxel) and by_type["translation"] == pytest.approx(shift)
    assert node.metadata["contrast_limits"] == [[100.0, 50000.0]]
    np.testing.assert_array_equal(np.asarray(node.data[0]), data)
    assert [tuple(lv.shape) for lv in node.data] == [(30, 24, 20), (15, 12, 10), (8, 6, 5)]


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
def test_napari_ome_zarr_places_the_store_as_geometry_does(make_napari_viewer, tmp_path: Path, ngff: str) -> None:
    data = iso_volume()
    path = write(tmp_path / "iso.ome.zarr", data, ngff=ngff, contrast=(100.0, 50000.0))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-ome-zarr")
    assert layer.multiscale and [tuple(lv.shape) for lv in layer.data] == [(30, 24, 20), (15, 12, 10), (8, 6, 5)]
    np.testing.assert_allclose(layer.scale, GEOMETRY.voxel_size)
    np.testing.assert_allclose(layer.translate, GEOMETRY.translation)
    np.testing.assert_allclose(layer.contrast_limits, (100.0, 50000.0))
    # ... and where niiv's own reader puts it, units included (napari-ome-zarr 0.10 drops units).
    [ours] = viewer.open(str(path), plugin="napari-niiv")
    np.testing.assert_allclose(ours.scale, layer.scale)
    np.testing.assert_allclose(ours.translate, layer.translate)
    np.testing.assert_allclose(ours.contrast_limits, layer.contrast_limits)
    assert [str(u) for u in ours.units] == ["nanometer"] * 3


def test_ngff04_keeps_the_zarr_v2_layout_and_round_trips(tmp_path: Path) -> None:
    from ome_zarr_models.v04.image import Image

    data = iso_volume()
    path = write(tmp_path / "old.ome.zarr", data, ngff="0.4")
    assert isinstance(validate_store(path), Image)
    assert (path / ".zgroup").exists() and not (path / "zarr.json").exists()
    attrs = json.loads((path / ".zattrs").read_text())
    assert attrs["multiscales"][0]["version"] == "0.4" and "ome" not in attrs
    assert (path / "0" / "1" / "0" / "0").is_file()  # "/"-separated chunk keys, as NGFF 0.4 asks
    vol = open_volume(path)
    np.testing.assert_array_equal(vol.data.compute(), data)
    assert vol.voxel_size == pytest.approx(GEOMETRY.voxel_size)
    assert vol.translation == pytest.approx(GEOMETRY.translation) and vol.unit == "nanometer"
    np.testing.assert_array_equal(vol.pyramid[0].compute(), zarr.open_array(str(path / "1"), mode="r")[:])


def test_ngff04_resumes_like_05(tmp_path: Path, monkeypatch) -> None:
    """The chunk engine is format-blind: a run cut short on zarr v2 resumes with the missing chunks
    only (one chunk a task here, so that the source fails between tasks)."""
    from napari_niiv.inference import store

    monkeypatch.setattr(store, "BLOCK_VOXELS", 8 * 24 * 20)
    data = iso_volume()
    out = tmp_path / "old.ome.zarr"
    layout = Layout(data.shape, data.dtype, (8, 24, 20), levels=1, ngff="0.4")

    class Failing(ArrayBlocks):
        def __call__(self, index):
            if index[0].start >= 16:
                raise OSError("disk full")
            return super().__call__(index)

    class InOrder:
        """The runner protocol, one chunk after the other in order, so the cut is known."""

        def run(self, job, items, on_result) -> None:
            for item in items:
                on_result(job(item))

    with pytest.raises(OSError, match="disk full"):
        write_ome_zarr(out, layout, Failing(data), runner=InOrder(), resume=True, fingerprint={"run": 1})
    assert partial_path(out).exists() and not out.exists()
    report = write_ome_zarr(out, layout, ArrayBlocks(data), resume=True, fingerprint={"run": 1})
    assert (report.chunks_total, report.chunks_resumed, report.chunks_written) == (4, 2, 2)
    np.testing.assert_array_equal(open_volume(out).data.compute(), data)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ngff": "0.6"}, "use 0.5 .default. or 0.4"),
        ({"unit": "second"}, "not a length unit"),
        ({"contrast": (5.0, 1.0)}, "low <= high"),
        ({"contrast": (0.0, float("nan"))}, "two finite numbers"),
    ],
)
def test_layout_refuses_what_it_cannot_write(options: dict, message: str) -> None:
    with pytest.raises(NiivInputError, match=message):
        Layout((4, 4, 4), "uint8", **options)


def test_layout_names_units_as_ngff_does() -> None:
    assert Layout((4, 4, 4), "uint8", unit="\u00b5m").unit == "micrometer"
    assert Layout((4, 4, 4), "uint8", unit="pixel").unit is None


def test_a_column_of_chunks_is_computed_once_and_a_task_cut_short_resumes_with_its_missing_chunks(
    tmp_path: Path, monkeypatch
) -> None:
    """For a model's blocks, level 0 computes the chunks stacked along z in one block (a model
    encodes each input row once, not once per chunk); a task killed after writing some of its chunks leaves markers for
    those only, and the resumed run writes the rest, identical to an uninterrupted run."""
    from napari_niiv.inference import store

    data = iso_volume()
    out = tmp_path / "col.ome.zarr"
    layout = Layout(data.shape, data.dtype, (8, 24, 20), levels=1)
    asked: list[tuple[int, int]] = []

    class Counting(ArrayBlocks):
        stacks_z = True  # as a model's blocks: a column's chunks computed together

        def __call__(self, index, cancelled, progress=None):
            asked.append((index[0].start, index[0].stop))
            return super().__call__(index)

    marker = store._marker

    def dies_at_the_third_chunk(partial, level, chunk):
        if asked and level == 0 and chunk[0].start == 16:  # after computing: its marker is next
            raise OSError("killed")
        return marker(partial, level, chunk)

    monkeypatch.setattr(store, "_marker", dies_at_the_third_chunk)
    with pytest.raises(OSError, match="killed"):
        write_ome_zarr(out, layout, Counting(data), resume=True, fingerprint={"run": 1})
    assert asked == [(0, 30)]  # the four chunks of the column, from one block
    monkeypatch.setattr(store, "_marker", marker)
    report = write_ome_zarr(out, layout, Counting(data), resume=True, fingerprint={"run": 1})
    assert (report.chunks_total, report.chunks_resumed, report.chunks_written) == (4, 2, 2)
    np.testing.assert_array_equal(open_volume(out).data.compute(), data)


def test_a_save_of_one_column_reports_its_progress_as_its_planes_are_decoded(tmp_path: Path) -> None:
    """A model's column of chunks is one task, minutes on a CPU: the progress moves with its planes
    (never backwards, ending at the total), and the store is what a save without listening writes."""
    from napari_niiv.data.normalise import fit_normalisation
    from napari_niiv.inference.reconstructor import BlockReconstruction
    from napari_niiv.inference.settings import InferenceSettings
    from tests.conftest import TINY, random_model

    low = np.random.default_rng(1).random((3, 12, 10), dtype=np.float32)
    geometry = output_geometry(low.shape, 4.0)
    settings = InferenceSettings(alpha=4.0, orientation="both", precision="fp32", device="cpu")
    job = BlockReconstruction(low, fit_normalisation(low), random_model(TINY), settings, geometry)
    job_reconstructor, _ = job._ready()
    job_reconstructor.slice_batch = 2  # several batches of planes in the one block
    layout = Layout(geometry.size, np.float32, geometry.size, levels=1)  # one chunk: one task
    seen: list[tuple[int, int]] = []
    write_ome_zarr(tmp_path / "heard.ome.zarr", layout, job, on_progress=lambda d, t: seen.append((d, t)))
    total = int(np.prod(geometry.size))
    done = [d for d, _ in seen]
    assert seen[0] == (0, total) and done[-1] == total and all(t == total for _, t in seen)
    assert done == sorted(done)
    assert len([d for d in done if 0 < d < total]) >= 4  # xz (12 planes) and yz (10), 2 at a time
    write_ome_zarr(tmp_path / "quiet.ome.zarr", layout, job)
    np.testing.assert_array_equal(
        open_volume(tmp_path / "heard.ome.zarr").data.compute(), open_volume(tmp_path / "quiet.ome.zarr").data.compute()
    )


def test_a_reconstruction_keeps_the_inputs_display_window(tmp_path: Path, capsys) -> None:
    """niiv reconstruct of a store with an omero window (10-150) wrote the normalisation's (0-199),
    and a save of a whole-volume layer wrote that rather than the layer's contrast limits (found
    by the reader audit); the docs say the known display window is written."""
    from napari_niiv.cli import main
    from napari_niiv.inference.weights import save_weights
    from tests.conftest import random_model

    data = np.random.default_rng(0).integers(0, 200, (8, 32, 32)).astype(np.uint8)
    g = output_geometry((8, 32, 32), 1.0, voxel_size=(40.0, 10.0, 10.0), unit="nm")
    layout = Layout(
        g.size, data.dtype, (8, 32, 32), (40.0, 10.0, 10.0), "nm", (0.0, 0.0, 0.0), 1, "s", contrast=(10.0, 150.0)
    )
    src = write_ome_zarr(tmp_path / "s.ome.zarr", layout, ArrayBlocks(data)).path
    assert open_volume(src).contrast == (10.0, 150.0)
    weights = save_weights(tmp_path / "w.safetensors", random_model(), 4.0, None)
    out = tmp_path / "iso.ome.zarr"
    args = ["reconstruct", str(src), str(out), "--weights", str(weights), "--levels", "1", "--precision", "fp32"]
    assert main(args) == 0, capsys.readouterr().err
    assert open_volume(out).contrast == (10.0, 150.0)


def test_a_display_window_wider_than_the_dtype_keeps_start_and_end_within_min_and_max(tmp_path: Path) -> None:
    """A layer whose contrast limits reach past its dtype (uint16 shown from -500 to 70000) wrote a
    window with start and end outside its own min and max (found by the eval-interop audit)."""
    path = write(tmp_path / "iso.ome.zarr", iso_volume(), contrast=(-500.0, 70000.0))
    ome = json.loads((path / "zarr.json").read_text())["attributes"]["ome"]
    window = ome["omero"]["channels"][0]["window"]
    assert (window["start"], window["end"]) == (-500.0, 70000.0)  # the layer's window, as shown
    assert window["min"] <= window["start"] < window["end"] <= window["max"]
    assert (window["min"], window["max"]) == (-500.0, 70000.0)
    validate_store(path)
