"""`niiv reconstruct` to OME-Zarr pyramids on dask: schedulers, chunkings, resuming, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from napari_niiv.cli import main
from napari_niiv.data import open_volume
from napari_niiv.errors import NiivInputError
from napari_niiv.inference.geometry import chunk_indices, pyramid_shapes
from napari_niiv.inference.reconstructor import reconstruct_volume
from napari_niiv.inference.settings import InferenceSettings
from napari_niiv.inference.store import (
    ArrayBlocks,
    Layout,
    downsample,
    ome_attributes,
    partial_path,
    write_ome_zarr,
)
from napari_niiv.inference.weights import load_weights, save_weights
from napari_niiv.model import NiivModel

from .conftest import random_model


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return save_weights(tmp_path / "tiny.safetensors", random_model(), 4.0, None, card={"architecture": "v2"})


@pytest.fixture
def aniso_zarr(tmp_path: Path, medulla: np.ndarray) -> Path:
    """Real FIB-SEM pooled by 4 along z, stored as float32 zarr in chunks that match nothing below."""
    vol = medulla[:32, :44, :40].astype(np.float32).reshape(8, 4, 44, 40).mean(axis=1)
    path = tmp_path / "aniso.zarr"
    arr = zarr.open_array(str(path), mode="w", shape=vol.shape, chunks=(3, 16, 16), dtype=np.float32)
    arr[:] = vol
    return path


def _reconstruct(capsys, src: Path, out: Path, weights: Path, *extra: str) -> str:
    args = ["reconstruct", str(src), str(out), "--alpha", "4", "--weights", str(weights), "--levels", "2"]
    code = main([*args, "--precision", "fp32", *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def _levels(path: Path) -> list[np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    return [np.asarray(root[d["path"]][:]) for d in root.attrs["ome"]["multiscales"][0]["datasets"]]


@pytest.mark.slow  # a dask LocalCluster
def test_output_is_the_same_on_threads_a_local_cluster_and_other_chunkings(tmp_path, capsys, aniso_zarr, weights):
    runs = {
        "one thread": ("--chunks", "16,16,16"),
        "two threads, other chunks": ("--chunks", "8,24,12", "--threads", "2"),
        "LocalCluster of 2 processes": ("--chunks", "12,16,20", "--workers", "2"),
    }
    results = {}
    environ = dict(os.environ)
    for name, extra in runs.items():
        out = tmp_path / f"{name.replace(' ', '_').replace(',', '')}.ome.zarr"
        err = _reconstruct(capsys, aniso_zarr, out, weights, *extra)
        assert ("dask.distributed" in err) == ("--workers" in extra)
        results[name] = _levels(out)
    assert dict(os.environ) == environ  # the cluster's thread settings for its workers stay theirs
    reference = results.pop("one thread")
    tol = 1e-5 * 255  # float32 rounding on intensities in 0..255 (block sizes change summation order)
    assert [lv.shape for lv in reference] == [(32, 44, 40), (16, 22, 20)]
    for name, levels in results.items():
        for level, ref in zip(levels, reference, strict=True):
            np.testing.assert_allclose(level, ref, rtol=0, atol=tol, err_msg=name)
    # ... and equal to the in-memory reconstruction of the same volume, with the pyramid's averages.
    model = load_weights(weights).model
    whole = reconstruct_volume(
        model, open_volume(aniso_zarr), InferenceSettings(alpha=4.0, orientation="both", precision="fp32")
    )
    np.testing.assert_allclose(reference[0], whole, rtol=0, atol=tol)
    np.testing.assert_allclose(reference[1], downsample(whole, np.float32), rtol=0, atol=tol)


@pytest.mark.slow  # kills a run and resumes it
def test_killed_run_resumes_with_only_the_missing_chunks(tmp_path, capsys, weights, medulla):
    src = tmp_path / "aniso.zarr"
    vol = medulla[:64, :64, :64].reshape(16, 4, 64, 64).mean(axis=1).astype(np.uint8)
    zarr.open_array(str(src), mode="w", shape=vol.shape, chunks=(8, 32, 32), dtype=np.uint8)[:] = vol
    out = tmp_path / "iso.ome.zarr"
    partial = partial_path(out)
    args = ["reconstruct", str(src), str(out), "--alpha", "4", "--weights", str(weights), "--levels", "2"]
    args += ["--chunks", "8,16,16", "--orientation", "xz", "--precision", "fp32"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "napari_niiv.cli", *args], env=env, stderr=subprocess.PIPE)
    done = partial / ".niiv" / "done" / "0"
    deadline = time.monotonic() + 120
    while not (done.exists() and len(list(done.iterdir())) >= 10):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no chunks written in two minutes"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()

    assert not out.exists(), "a killed run must not leave a store that looks complete"
    finished = sorted(p.name for p in done.iterdir())
    assert 10 <= len(finished) < 128
    keys = {n: tuple(int(s) // c for s, c in zip(n.split("."), (8, 16, 16), strict=True)) for n in finished}
    chunk_files = {n: partial / "0" / "c" / "/".join(str(k) for k in keys[n]) for n in finished}  # zarr v3 keys
    stamps = {n: f.stat().st_mtime_ns for n, f in chunk_files.items()}

    err = _reconstruct(capsys, src, out, weights, "--chunks", "8,16,16", "--orientation", "xz")
    assert f"{len(finished)} were already written by an earlier run" in err
    assert f"{128 + 16 - len(finished)} of {128 + 16} chunks written now" in err
    assert not partial.exists() and not (out / ".niiv").exists()
    for n, f in chunk_files.items():  # the earlier run's chunks were not written again
        assert (out / f.relative_to(partial)).stat().st_mtime_ns == stamps[n]

    again = tmp_path / "uninterrupted.ome.zarr"
    _reconstruct(capsys, src, again, weights, "--chunks", "8,16,16", "--orientation", "xz")
    for resumed, straight in zip(_levels(out), _levels(again), strict=True):
        np.testing.assert_array_equal(resumed, straight)


def _failing_source(fail_from: int) -> ArrayBlocks:
    data = np.arange(12 * 8 * 8, dtype=np.uint16).reshape(12, 8, 8)

    def fail(block: np.ndarray, block_info=None) -> np.ndarray:
        if block_info[0]["chunk-location"][0] >= fail_from:
            raise OSError("disk full")
        return block

    return ArrayBlocks(da.from_array(data, chunks=(4, 8, 8)).map_blocks(fail, dtype=np.uint16))


def test_a_failed_run_never_looks_complete_and_other_settings_do_not_resume(tmp_path) -> None:
    out = tmp_path / "v.ome.zarr"
    layout = Layout((12, 8, 8), "uint16", chunks=(4, 8, 8))
    with pytest.raises(OSError, match="disk full"):
        write_ome_zarr(out, layout, _failing_source(1), resume=True, fingerprint={"alpha": 8})
    assert not out.exists() and partial_path(out).exists()
    kept = len(list((partial_path(out) / ".niiv" / "done" / "0").iterdir()))  # chunk 0, if it ran first
    with pytest.raises(NiivInputError, match=r"differs from this one \(another alpha\).*--restart"):
        write_ome_zarr(out, layout, _failing_source(99), resume=True, fingerprint={"alpha": 6})
    # the store's layout too, named in the options' words (it once read 'chunking or output shape')
    for other, why in (
        (Layout((12, 8, 8), "uint16", chunks=(2, 8, 8)), r"other chunks \(--chunks\)"),
        (Layout((12, 8, 8), "uint16", chunks=(4, 8, 8), ngff="0.4"), r"another NGFF version \(--ngff\)"),
        (Layout((12, 8, 8), "uint16", chunks=(4, 8, 8), levels=1), r"pyramid levels \(--levels\)"),
    ):
        with pytest.raises(NiivInputError, match=why):
            write_ome_zarr(out, other, _failing_source(99), resume=True, fingerprint={"alpha": 8})
    report = write_ome_zarr(out, layout, _failing_source(99), resume=True, fingerprint={"alpha": 8})
    assert (report.chunks_total, report.chunks_resumed, report.chunks_written) == (3, kept, 3 - kept)
    np.testing.assert_array_equal(open_volume(out).data.compute(), np.arange(768).reshape(12, 8, 8))
    assert json.loads((out / "zarr.json").read_text())["attributes"]["niiv"] == {"alpha": 8}

    # Without resume (napari's writer) a failure leaves nothing at all.
    other = tmp_path / "w.ome.zarr"
    with pytest.raises(OSError, match="disk full"):
        write_ome_zarr(other, layout, _failing_source(2))
    assert not other.exists() and not partial_path(other).exists()


@pytest.mark.slow  # a dask LocalCluster
def test_cli_says_what_to_do_after_an_interruption(tmp_path, capsys, aniso_zarr, weights) -> None:
    out = tmp_path / "iso.ome.zarr"
    partial_path(out).mkdir()  # something not ours is in the way: it is never deleted silently
    code = main(["reconstruct", str(aniso_zarr), str(out), "--alpha", "4", "--weights", str(weights)])
    assert code == 2 and "not an unfinished niiv run" in capsys.readouterr().err
    assert partial_path(out).exists()
    code = main(["reconstruct", str(aniso_zarr), str(out), "--alpha", "4", "--weights", str(weights), "--restart"])
    assert code == 2 and "move it away yourself" in capsys.readouterr().err  # --restart discards only niiv's own
    assert partial_path(out).exists()
    partial_path(out).rmdir()  # what the message asks the user to do
    _reconstruct(capsys, aniso_zarr, out, weights)
    assert out.exists()
    code = main(["reconstruct", str(aniso_zarr), str(tmp_path / "x.tif"), "--alpha", "4", "--workers", "2"])
    assert code == 2 and "need a .zarr output" in capsys.readouterr().err
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code = main(
            [
                "reconstruct",
                str(aniso_zarr),
                str(tmp_path / "y.zarr"),
                "--alpha",
                "4",
                "--scheduler",
                "tcp://127.0.0.1:9",
            ]
        )
    assert code == 2 and "could not reach a dask scheduler" in capsys.readouterr().err


def test_pyramid_geometry() -> None:
    assert pyramid_shapes((1024, 1024, 1024)) == [(1024,) * 3, (512,) * 3, (256,) * 3]
    assert pyramid_shapes((5, 9, 300), levels=3) == [(5, 9, 300), (3, 5, 150), (2, 3, 75)]
    assert pyramid_shapes((2, 2, 2), levels=5) == [(2, 2, 2), (1, 1, 1)]
    cover = np.zeros((5, 9, 11), int)
    for index in chunk_indices((5, 9, 11), (2, 4, 5)):
        cover[index] += 1
    assert (cover == 1).all()
    odd = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    small = downsample(odd, np.uint8)
    assert small.shape == (2, 2, 2) and small[1, 1, 1] == 26 and small[0, 0, 0] == round(odd[:2, :2, :2].mean())


def test_each_level_sits_where_geometry_puts_it(tmp_path) -> None:
    """Level L averages 2**L voxels: its scale is 2**L v and its first centre (2**L - 1) / 2 voxels in."""
    layout = Layout((8, 8, 8), "uint8", voxel_size=(2.0, 2.0, 2.0), unit="nm", translation=(10.0, 0.0, 0.0), levels=3)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    for level, shape in enumerate(layout.shapes):
        group.create_array(str(level), shape=shape, dtype="u1", dimension_names=("z", "y", "x"))
    datasets = ome_attributes(layout, group)["ome"]["multiscales"][0]["datasets"]
    transforms = [{t["type"]: t[t["type"]] for t in d["coordinateTransformations"]} for d in datasets]
    assert [t["scale"] for t in transforms] == [[2.0] * 3, [4.0] * 3, [8.0] * 3]
    assert [t["translation"] for t in transforms] == [[10.0, 0.0, 0.0], [11.0, 1.0, 1.0], [13.0, 3.0, 3.0]]
    assert [layout.geometry.level(lv) for lv in range(3)] == [
        (tuple(t["scale"]), tuple(t["translation"])) for t in transforms
    ]


def test_a_path_source_is_reopened_by_each_worker(aniso_zarr, weights) -> None:
    """The block source pickles without the volume's pixels or an open file: workers read their own chunks."""
    import pickle

    from napari_niiv.data import fit_normalisation
    from napari_niiv.inference.geometry import output_geometry
    from napari_niiv.inference.reconstructor import BlockReconstruction

    model: NiivModel = load_weights(weights).model
    vol = open_volume(aniso_zarr)
    settings = InferenceSettings(alpha=4.0, orientation="xz")
    source = BlockReconstruction(
        aniso_zarr, fit_normalisation(vol.data), model, settings, output_geometry(vol.shape, 4.0)
    )
    first = source((slice(0, 8), slice(0, 8), slice(0, 8)))
    copy = pickle.loads(pickle.dumps(source))
    assert copy._state is None and isinstance(copy.source, str)
    np.testing.assert_array_equal(copy((slice(0, 8), slice(0, 8), slice(0, 8))), first)


def test_a_resume_refusal_names_the_settings_not_what_follows_from_them() -> None:
    """Another alpha also changes the output's shape, region, voxel sizes and pyramid: the refusal
    listed them all, as if the user had changed each (found by the lazy-layer audit)."""
    from napari_niiv.inference.store import _differences

    earlier = {
        "fingerprint": {"settings": {"alpha": 8}, "output_shape": [64], "region": [[0, 64]], "voxel_size": [5]},
        "layout": {"shapes": [[64], [32]], "chunks": [8]},
    }
    now = {
        "fingerprint": {"settings": {"alpha": 6}, "output_shape": [48], "region": [[0, 48]], "voxel_size": [6.7]},
        "layout": {"shapes": [[48], [24]], "chunks": [4]},
    }
    assert _differences(earlier, now) == [
        "other alpha, scale, orientation, device, precision or sections (degradation)",
        "other chunks (--chunks)",
    ]
    same_settings = {**now, "fingerprint": {**now["fingerprint"], "settings": {"alpha": 8}}}
    assert "another region (--region)" in _differences(earlier, same_settings)
