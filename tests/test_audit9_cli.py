"""Defects found by the ninth command-line and stores audit (out/audits9/cli-stores.md)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_niiv.errors import NiivInputError
from napari_niiv.inference.runners import DistributedRunner
from napari_niiv.inference.store import ArrayBlocks, Layout, partial_path, write_ome_zarr

distributed = pytest.importorskip("distributed")

STARTED = threading.Event()
GO = threading.Event()


class _Held:
    """A block source whose task starts, then waits until the test lets it finish."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __call__(self, index: tuple[slice, ...]) -> np.ndarray:
        STARTED.set()
        assert GO.wait(60)
        return np.full(tuple(s.stop - s.start for s in index), self.value, np.uint8)


def test_a_cluster_task_that_outlives_its_run_writes_nothing_into_a_restarted_store(tmp_path: Path) -> None:
    """A run on a dask cluster stopped by Ctrl-C (or killed) leaves its running task on a worker:
    it went on, wrote its chunk and that chunk's marker into the OUT.partial a `--restart` with
    other settings had made anew, and the new run skipped the chunk as done: the published store
    held the old run's voxels under the new run's settings, silently."""
    out = tmp_path / "o.ome.zarr"
    layout = Layout((8, 16, 16), "|u1", (8, 16, 16), (1.0, 1.0, 1.0))
    STARTED.clear()
    GO.clear()
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        first = distributed.Client(cluster)
        failed: list[BaseException] = []

        def old_run() -> None:
            try:
                write_ome_zarr(
                    out, layout, _Held(1), runner=DistributedRunner(first), fingerprint={"v": 1}, resume=True
                )
            except BaseException as exc:  # the client goes away under it, as under Ctrl-C
                failed.append(exc)

        t = threading.Thread(target=old_run)
        t.start()
        assert STARTED.wait(60)
        first.close()  # the task keeps running on the worker
        t.join(60)
        assert failed and partial_path(out).exists()
        with distributed.Client(cluster) as second:
            done: list[object] = []

            def new_run() -> None:
                done.append(
                    write_ome_zarr(
                        out,
                        layout,
                        ArrayBlocks(np.full((8, 16, 16), 2, np.uint8)),
                        runner=DistributedRunner(second),
                        fingerprint={"v": 2},
                        resume=True,
                        restart=True,
                    )
                )

            t2 = threading.Thread(target=new_run)
            t2.start()
            job = partial_path(out) / ".niiv" / "job.json"
            for _ in range(600):  # the restarted store exists; its task waits behind the old one
                if job.exists() and '"v": 2' in job.read_text():
                    break
                threading.Event().wait(0.05)
            GO.set()
            t2.join(60)
            assert done
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][:], 2)


def test_a_relative_output_is_written_where_the_command_ran_not_in_a_workers_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`niiv reconstruct in.zarr out.ome.zarr --scheduler ...` with a relative OUT: the workers
    opened 'out.ome.zarr.partial/0' in their own working directory and the run ended in a
    FileNotFoundError traceback from a worker."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    layout = Layout((8, 16, 16), "|u1", (8, 16, 16), (1.0, 1.0, 1.0))
    data = np.arange(8 * 16 * 16, dtype=np.uint8).reshape(8, 16, 16)
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(os.chdir, str(elsewhere))
        write_ome_zarr(Path("o.ome.zarr"), layout, ArrayBlocks(data), runner=DistributedRunner(client))
    np.testing.assert_array_equal(zarr.open_group(str(here / "o.ome.zarr"), mode="r")["0"][:], data)
    assert not list(elsewhere.iterdir())


def test_a_resume_refused_for_other_settings_says_which_and_how(tmp_path: Path) -> None:
    """A rerun refused for its settings listed six candidates ('other alpha, scale, orientation,
    device, precision or sections'): the user could not tell which one differed, e.g. a device
    or precision that `auto` resolved otherwise on another machine."""
    out = tmp_path / "o.ome.zarr"
    layout = Layout((8, 16, 16), "|u1", (8, 16, 16), (1.0, 1.0, 1.0))
    blocks = ArrayBlocks(np.zeros((8, 16, 16), np.uint8))
    from napari_niiv.inference.store import WriteCancelled

    settings = {"alpha": 10.0, "scale": 1.0, "device": "cpu", "precision": "bf16"}
    with pytest.raises(WriteCancelled):
        write_ome_zarr(out, layout, blocks, fingerprint={"settings": settings}, resume=True, cancelled=lambda: True)
    changed = {**settings, "precision": "fp32"}
    with pytest.raises(NiivInputError) as info:
        write_ome_zarr(out, layout, blocks, fingerprint={"settings": changed}, resume=True)
    assert "precision bf16 (this run: fp32)" in str(info.value)
    assert "alpha 10" not in str(info.value)


def test_an_alpha_by_hand_that_contradicts_the_files_voxel_sizes_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`niiv reconstruct stack.tif out --alpha 4` on a file whose voxel sizes give alpha 8 wrote an
    'isotropic' output of voxels (0.02, 0.01, 0.01) um, alpha 2, and said nothing: the output
    keeps the file's extent, so a by-hand alpha stretches it."""
    import tifffile

    from napari_niiv.cli import main
    from napari_niiv.data.io import open_volume

    rng = np.random.default_rng(0)

    def imagej_stack(path: Path, z_um: float) -> Path:  # xy voxels of 0.01 um
        data = rng.integers(0, 255, (3, 24, 24), dtype=np.uint8)
        tifffile.imwrite(path, data, imagej=True, resolution=(100.0, 100.0), metadata={"spacing": z_um, "unit": "um"})
        return path

    stack = imagej_stack(tmp_path / "stack.tif", 0.08)
    out = tmp_path / "iso.npy"
    assert main(["reconstruct", str(stack), str(out), "--alpha", "4", "--weights", "niiv-fast"]) == 0
    err = capsys.readouterr().err
    assert "--alpha 4 is not the alpha of" in err and "(8)" in err and "not isotropic" in err
    assert open_volume(out).shape == (12, 24, 24)
    same = tmp_path / "same.npy"
    assert main(["reconstruct", str(stack), str(same), "--alpha", "8", "--weights", "niiv-fast"]) == 0
    # voxel sizes that give an alpha niiv refuses (200: leaving --alpha out is refused) are not
    # answered with "leave out --alpha" (audit 12: docs)
    wrong = imagej_stack(tmp_path / "wrong.tif", 2.0)
    assert main(["reconstruct", str(wrong), str(tmp_path / "w.npy"), "--weights", "niiv-fast"]) == 2
    assert "outside 1 to 100; if they are wrong, pass the anisotropy with --alpha" in capsys.readouterr().err
    assert main(["reconstruct", str(wrong), str(tmp_path / "w.npy"), "--alpha", "8", "--weights", "niiv-fast"]) == 0
    err = capsys.readouterr().err
    assert "(200)" in err and "leave out --alpha" not in err and "correct them in the file" in err
    assert "not isotropic" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "named"),
    [(["--levels", "2"], "--levels shapes"), (["--chunks", "8,64,64", "--ngff", "0.4"], "--chunks and --ngff shape")],
)
def test_store_options_for_an_output_written_whole_are_refused(tmp_path: Path, capsys, options, named) -> None:
    """--levels, --chunks and --ngff were silently ignored for a .tif or .npy output (the CLI-stores
    audit 9): the user believed they had a pyramid, chunks or an NGFF version they did not get."""
    from napari_niiv.cli import main

    src = str(Path(os.environ.get("NIIV_DATA_DIR", "../shared/data")) / "anisotropic_em" / "cremi_a.tif")
    common = ["--alpha", "10", "--region", "0:4,0:48,0:48", "--weights", "niiv-fast"]
    out = tmp_path / "iso.tif"
    assert main(["reconstruct", src, str(out), *common, *options]) == 2
    err = capsys.readouterr().err
    assert f"{named} an OME-Zarr output; iso.tif is written whole as .tif" in err and not out.exists()
    store = tmp_path / "iso.ome.zarr"
    assert main(["reconstruct", src, str(store), *common, *options]) == 0
    assert zarr.open_group(str(store), mode="r")


def test_a_level_of_an_ome_zarr_store_opens_with_that_levels_voxel_sizes(tmp_path: Path) -> None:
    """`niiv reconstruct store.ome.zarr/0 ...` said the volume 'gives no voxel sizes: pass --alpha'
    (the CLI-stores audit 9): the level's array holds none, its image's metadata beside it does."""
    import tifffile

    from napari_niiv.cli import main
    from napari_niiv.data.io import open_volume

    stack = tmp_path / "stack.tif"
    data = np.random.default_rng(0).integers(0, 255, (6, 64, 64), dtype=np.uint8)
    tifffile.imwrite(stack, data, imagej=True, resolution=(250.0, 250.0), metadata={"spacing": 0.04, "unit": "um"})
    store = tmp_path / "iso.ome.zarr"
    assert main(["reconstruct", str(stack), str(store), "--weights", "niiv-fast", "--levels", "2"]) == 0
    whole = open_volume(store)
    level0, level1 = open_volume(store / "0"), open_volume(store / "1")
    assert (level0.voxel_size, level0.translation, level0.unit) == (whole.voxel_size, whole.translation, whole.unit)
    np.testing.assert_allclose(level1.voxel_size, (0.008, 0.008, 0.008))
    np.testing.assert_allclose(level1.translation, (-0.016, 0.002, 0.002))
    assert level1.unit == "micrometer" and level1.shape == (30, 32, 32)
    np.testing.assert_array_equal(np.asarray(level0.data), np.asarray(whole.data))
    plain = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=(4, 8, 8), dtype="uint8")
    assert not open_volume(tmp_path / "plain.zarr").has_voxel_size and plain.shape == (4, 8, 8)
