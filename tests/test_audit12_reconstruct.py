"""Audit 12, `niiv reconstruct` to OME-Zarr: a chunk of an unfinished run deleted or damaged (cut
short, or a bit flipped) before the resume is written again (not published as zeros or as a file
no reader can decode), and an output given as a URL is refused instead of written to a local
folder named after the URL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_niiv.data.io import open_volume
from napari_niiv.inference.store import ArrayBlocks, Layout, partial_path, write_ome_zarr

SHAPE = (16, 24, 20)


def volume() -> np.ndarray:
    data = np.random.default_rng(1).integers(1, 60000, SHAPE).astype(np.uint16)
    data[0:8, 0:8, 0:8] = 0  # one chunk all fill value: zarr stores no file for it
    return data


class InOrder:
    """The runner protocol, one chunk after the other in order, so the cut is known."""

    def run(self, job, items, on_result) -> None:
        for item in items:
            on_result(job(item))


class Failing(ArrayBlocks):
    """Fails on the chunks from z 8 on: level 0 is cut short after its first z row of chunks."""

    def __call__(self, index):
        if index[0].start >= 8:
            raise OSError("disk full")
        return super().__call__(index)


def pyramid(path: Path) -> list[np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return [group[str(level)][:] for level in range(len(list(group.array_keys())))]


def cut_short(tmp_path: Path, data: np.ndarray, layout: Layout) -> Path:
    out = tmp_path / "iso.ome.zarr"
    with pytest.raises(OSError, match="disk full"):
        write_ome_zarr(out, layout, Failing(data), runner=InOrder(), resume=True, fingerprint={"run": 1})
    assert partial_path(out).exists() and not out.exists()
    return out


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
@pytest.mark.parametrize("harm", ["delete", "truncate", "flip"])
def test_a_chunk_lost_or_damaged_in_the_unfinished_run_is_written_again_on_resume(
    tmp_path: Path, ngff: str, harm: str
) -> None:
    data = volume()
    layout = Layout(SHAPE, data.dtype, (8, 8, 8), levels=2, ngff=ngff)
    whole = write_ome_zarr(tmp_path / "whole.ome.zarr", layout, ArrayBlocks(data)).path
    out = cut_short(tmp_path, data, layout)
    level0 = partial_path(out) / "0"
    key = "c/0/1/1" if ngff == "0.5" else "0/1/1"
    chunk = level0 / key
    assert chunk.is_file() and (partial_path(out) / ".niiv" / "done" / "0" / "0.8.8").exists()
    if harm == "delete":
        chunk.unlink()
    elif harm == "truncate":
        chunk.write_bytes(chunk.read_bytes()[:10])
    else:  # one bit flipped in the compressed payload: the size stays, the content does not
        content = bytearray(chunk.read_bytes())
        content[len(content) // 2] ^= 0x10
        chunk.write_bytes(bytes(content))
    report = write_ome_zarr(out, layout, ArrayBlocks(data), resume=True, fingerprint={"run": 1})
    assert report.chunks_resumed < report.chunks_total
    for got, want in zip(pyramid(out), pyramid(whole), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(open_volume(out).data.compute(), data)


def test_a_level_made_from_a_damaged_chunk_is_made_again(tmp_path: Path) -> None:
    """Level 1 was finished from a chunk that is then lost: level 1 is downsampled again too."""
    data = volume()
    layout = Layout(SHAPE, data.dtype, (8, 8, 8), levels=2)
    whole = write_ome_zarr(tmp_path / "whole.ome.zarr", layout, ArrayBlocks(data)).path
    out = tmp_path / "iso.ome.zarr"

    class StopAtTheTop:
        """Runs levels 0 and 1 in full, then fails: the run stops before publishing."""

        calls = 0

        def run(self, job, items, on_result) -> None:
            for item in items:
                on_result(job(item))
            StopAtTheTop.calls += 1
            if StopAtTheTop.calls == 2:
                raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_ome_zarr(out, layout, ArrayBlocks(data), runner=StopAtTheTop(), resume=True, fingerprint={"run": 1})
    (partial_path(out) / "0" / "c" / "1" / "2" / "1").unlink()
    write_ome_zarr(out, layout, ArrayBlocks(data), resume=True, fingerprint={"run": 1})
    for got, want in zip(pyramid(out), pyramid(whole), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_resume_keeps_the_chunks_left_as_they_were(tmp_path: Path) -> None:
    """The check costs no work: an undamaged unfinished run resumes with only its missing chunks
    (the all-zero chunk, which has no file, included)."""
    data = volume()
    layout = Layout(SHAPE, data.dtype, (8, 8, 8), levels=1)
    out = cut_short(tmp_path, data, layout)
    report = write_ome_zarr(out, layout, ArrayBlocks(data), resume=True, fingerprint={"run": 1})
    assert (report.chunks_total, report.chunks_resumed, report.chunks_written) == (18, 9, 9)
    np.testing.assert_array_equal(open_volume(out).data.compute(), data)


def test_markers_of_an_older_version_with_only_a_size_still_resume(tmp_path: Path) -> None:
    """Markers written before they held a checksum (only the size) are checked by size alone: an
    unfinished run of that version resumes without writing its chunks again."""
    data = volume()
    layout = Layout(SHAPE, data.dtype, (8, 8, 8), levels=1)
    out = cut_short(tmp_path, data, layout)
    markers = [m for m in (partial_path(out) / ".niiv" / "done").rglob("*") if m.is_file()]
    assert len(markers) == 9
    for marker in markers:
        marker.write_text(marker.read_text().split(" ")[0])
    report = write_ome_zarr(out, layout, ArrayBlocks(data), resume=True, fingerprint={"run": 1})
    assert (report.chunks_resumed, report.chunks_written) == (9, 9)
    np.testing.assert_array_equal(open_volume(out).data.compute(), data)


@pytest.mark.parametrize("url", ["s3://bucket/iso.ome.zarr", "file:///tmp/iso.ome.zarr", "https://host/iso.zarr"])
def test_an_output_url_is_refused_not_written_to_a_local_folder_named_after_it(
    tmp_path: Path, capsys, monkeypatch, url: str
) -> None:
    from napari_niiv.cli import main

    np.save(tmp_path / "in.npy", np.random.default_rng(0).random((4, 32, 32)).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    code = main(["reconstruct", "in.npy", url, "--alpha", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "not to a URL" in err and "local path" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]  # no 's3:' / 'file:' folder made
    # the confidence map's path too: it was written to ./s3:/bucket/map.zarr after OUT
    code = main(["reconstruct", "in.npy", "out.tif", "--alpha", "4", "--weights", "niiv-fast", "--confidence", url])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"niiv reconstruct: error: --confidence {url}: ") and "not to a URL" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


def niiv_store(path: Path) -> Path:
    """A small OME-Zarr napari-niiv wrote (so that --overwrite would be allowed to replace it)."""
    data = np.random.default_rng(2).integers(0, 255, (4, 72, 72)).astype(np.uint8)
    layout = Layout(data.shape, data.dtype, (4, 72, 72), (40.0, 10.0, 10.0), "nm", levels=1)
    return write_ome_zarr(path, layout, ArrayBlocks(data), fingerprint={"made": "here"}).path


def test_a_file_url_input_is_protected_like_its_path(tmp_path: Path, capsys) -> None:
    """`niiv reconstruct file:///data/in.zarr /data/in.zarr --overwrite` replaced the input with its
    reconstruction (the input-is-output check skipped every URL), and an output inside it was
    written into the input's store."""
    from napari_niiv.cli import main

    store = niiv_store(tmp_path / "in.ome.zarr")
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    url = store.absolute().as_uri()
    for out, word in ((store, "is the input"), (store / "iso.ome.zarr", "lies inside the input")):
        code = main(["reconstruct", url, str(out), "--overwrite"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and word in err, err
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    np.testing.assert_array_equal(open_volume(store).data.compute(), open_volume(url).data.compute())


def test_a_file_url_input_has_its_size_and_date_in_the_resume_fingerprint(tmp_path: Path) -> None:
    """The size and date of the input are part of what a resume compares: a file:// input had none,
    so an edit its sampled content digest missed was resumed into a mixed store."""
    from napari_niiv.inference.export import path_signature

    store = niiv_store(tmp_path / "in.ome.zarr")
    local = path_signature(store)
    assert local["files"] > 0 and path_signature(store.absolute().as_uri()) == local
    assert path_signature("s3://bucket/in.ome.zarr") == {}


def test_a_file_url_names_its_path_once_unquoted() -> None:
    from napari_niiv.data.io import local_path

    assert local_path(Path("/data/a%2541 b.zarr").as_uri()) == Path("/data/a%2541 b.zarr")
    assert local_path("file://localhost/data/x.zarr") == Path("/data/x.zarr")
    assert local_path("s3://bucket/x.zarr") is None and local_path("file://server/x.zarr") is None


def test_a_run_stopped_while_its_store_is_made_leaves_nothing_a_rerun_refuses(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C while the empty store was being made left OUT.partial without its job record: the
    rerun and --restart both refused it as 'not an unfinished niiv run' (the CLI had just said to
    run the same command again)."""
    from napari_niiv.inference import store

    data = volume()
    layout = Layout(SHAPE, data.dtype, (8, 8, 8), levels=2)
    out = tmp_path / "iso.ome.zarr"
    made = store._create_store

    def stopped(path, layout):
        made(path, layout)
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_create_store", stopped)
    with pytest.raises(KeyboardInterrupt):
        write_ome_zarr(out, layout, ArrayBlocks(data), resume=True, fingerprint={"run": 1})
    monkeypatch.setattr(store, "_create_store", made)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    write_ome_zarr(out, layout, ArrayBlocks(data), resume=True, fingerprint={"run": 1})
    np.testing.assert_array_equal(open_volume(out).data.compute(), data)


def test_a_run_stopped_while_it_removes_the_store_it_replaces_can_be_rerun(tmp_path: Path, monkeypatch) -> None:
    """--overwrite deleted the old OUT in place before the rename: a kill while a large store was
    being deleted left half of it at OUT (its zarr.json gone), which the rerun with --overwrite then
    refused as a folder napari-niiv did not write, with the finished new store stuck in OUT.partial."""
    from napari_niiv.inference import store

    data = volume()
    layout = Layout(SHAPE, data.dtype, (8, 8, 8), levels=2)
    out = tmp_path / "iso.ome.zarr"
    write_ome_zarr(out, layout, ArrayBlocks(data[::-1].copy()), resume=True, fingerprint={"run": 0})
    rmtree = store.shutil.rmtree

    def killed_while_deleting(path, *args, **kwargs):
        path = Path(path)
        if path.name.startswith(out.name) and store._WORK not in path.parts and ".partial" not in path.name:
            (path / "zarr.json").unlink()  # the old store half deleted, then the kill
            raise KeyboardInterrupt
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(store.shutil, "rmtree", killed_while_deleting)
    with pytest.raises(KeyboardInterrupt):
        write_ome_zarr(out, layout, ArrayBlocks(data), resume=True, overwrite=True, fingerprint={"run": 1})
    monkeypatch.setattr(store.shutil, "rmtree", rmtree)
    if out.exists():  # the new store is in place whole, never the old one in part
        np.testing.assert_array_equal(open_volume(out).data.compute(), data)
    write_ome_zarr(out, layout, ArrayBlocks(data), resume=True, overwrite=True, fingerprint={"run": 1})
    np.testing.assert_array_equal(open_volume(out).data.compute(), data)


def test_what_a_kill_leaves_in_those_two_moments_is_removed_by_the_next_run(tmp_path: Path) -> None:
    """A SIGKILL while the empty store is made aside (400319b) or while --overwrite has set the old
    OUT aside (df9786c) left OUT.partial.<id>.new or OUT.<id>.replaced beside OUT for good. The next
    run for OUT removes them: the store made aside at its start (under OUT's lock), the old output
    once the new one is in place; folders of any other name stay."""
    from napari_niiv.errors import NiivInputError

    data = volume()
    layout = Layout(SHAPE, data.dtype, (8, 8, 8), levels=2)
    out = tmp_path / "iso.ome.zarr"
    made_aside = tmp_path / "iso.ome.zarr.partial.0a1b2c3d.new"
    set_aside = tmp_path / "iso.ome.zarr.4e5f6a7b.replaced"
    kept = [tmp_path / "iso.ome.zarr.partial.mine.new", tmp_path / "iso.ome.zarr.backup.replaced", tmp_path / "other"]
    for folder in [made_aside, set_aside, *kept]:
        (folder / ".niiv").mkdir(parents=True)
        (folder / ".niiv" / "job.json").write_text("{}")
    write_ome_zarr(out, layout, ArrayBlocks(data[::-1].copy()), resume=True, fingerprint={"run": 0})
    assert not made_aside.exists() and not set_aside.exists()
    assert all(k.is_dir() for k in kept)
    # a run that does not put a new OUT in place leaves the old output set aside where it is
    set_aside.mkdir()
    with pytest.raises(NiivInputError, match="already exists"):
        write_ome_zarr(out, layout, ArrayBlocks(data), resume=True, fingerprint={"run": 1})
    assert set_aside.is_dir()
    write_ome_zarr(out, layout, ArrayBlocks(data), resume=True, overwrite=True, fingerprint={"run": 1})
    assert not set_aside.exists() and all(k.is_dir() for k in kept)
    np.testing.assert_array_equal(open_volume(out).data.compute(), data)


def test_a_resume_refused_for_the_inputs_date_alone_says_so(tmp_path: Path) -> None:
    """The input copied back (same bytes, a new date) was refused as 'the input's content changed',
    sending the user to look for an edit that was never made."""
    from napari_niiv.errors import NiivInputError

    data = volume()
    layout = Layout(SHAPE, data.dtype, (8, 8, 8), levels=1)
    out = tmp_path / "iso.ome.zarr"
    was = {"input_content": {"content_sha256": "ab", "bytes": 10, "mtime_ns": 1}}
    with pytest.raises(OSError, match="disk full"):
        write_ome_zarr(out, layout, Failing(data), runner=InOrder(), resume=True, fingerprint=was)
    now = {"input_content": was["input_content"] | {"mtime_ns": 2}}
    with pytest.raises(NiivInputError, match="modification date changed"):
        write_ome_zarr(out, layout, ArrayBlocks(data), resume=True, fingerprint=now)


@pytest.mark.parametrize("inside", ["other.ome.zarr/iso.ome.zarr", "other.ome.zarr/0/iso.tif"])
def test_an_output_inside_another_zarr_store_is_refused(tmp_path: Path, inside: str, capsys) -> None:
    """`niiv reconstruct in.tif other.ome.zarr/iso.ome.zarr` wrote a store nested in the user's
    other store, a member of its hierarchy (reported by audit 13: reader/writer; the napari writer
    refused it already); nothing is written there now."""
    from napari_niiv.cli import main

    data = volume()
    other = write_ome_zarr(
        tmp_path / "other.ome.zarr", Layout(SHAPE, data.dtype, (8, 8, 8), levels=1), ArrayBlocks(data)
    )
    before = sorted(p.relative_to(other.path) for p in other.path.rglob("*"))
    np.save(tmp_path / "in.npy", data[:, :, :].astype(np.uint8))
    code = main(["reconstruct", str(tmp_path / "in.npy"), str(tmp_path / inside), "--alpha", "4"])
    assert code == 2 and f"lies inside the zarr store {other.path}" in capsys.readouterr().err
    assert sorted(p.relative_to(other.path) for p in other.path.rglob("*")) == before
