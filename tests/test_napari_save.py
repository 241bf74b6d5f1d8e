"""Saving without blocking: the store's cooperative cancel, and the widget's background save
(cancel, resume to the same result, a window that keeps responding)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zarr

from napari_niiv.inference.runners import ThreadedRunner
from napari_niiv.inference.store import ArrayBlocks, Layout, WriteCancelled, partial_path, write_ome_zarr


class CountingBlocks(ArrayBlocks):
    """An array as a block source that counts the blocks it computes."""

    def __init__(self, data: np.ndarray) -> None:
        super().__init__(data)
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, index):
        with self._lock:
            self.calls += 1
        return super().__call__(index)


def levels(path) -> list[np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return [np.asarray(group[key]) for key in sorted(group.array_keys(), key=int)]


@pytest.mark.parametrize("threads", [1, 2])
def test_a_cancelled_write_keeps_its_partial_store_and_resumes_to_the_same_store(tmp_path, threads):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (40, 48, 300), dtype=np.uint8)
    layout = Layout(data.shape, data.dtype, chunks=(8, 48, 300))  # 5 chunks at level 0; 2 levels
    write_ome_zarr(tmp_path / "whole.ome.zarr", layout, ArrayBlocks(data))

    out = tmp_path / "cut.ome.zarr"
    progress: list[int] = []
    source = CountingBlocks(data)
    with pytest.raises(WriteCancelled) as info:
        write_ome_zarr(
            out,
            layout,
            source,
            runner=ThreadedRunner(threads),
            resume=True,
            on_progress=lambda done, total: progress.append(done),
            cancelled=lambda: len(progress) > 1,  # after the first chunk written
        )
    partial = partial_path(out)
    assert info.value.partial == partial and partial.is_dir() and not out.exists()
    written = source.calls
    assert 1 <= written < 5, "the cancel stopped nothing, or came before any chunk"
    chunks = [p for p in (partial / "0" / "c").rglob("*") if p.is_file()]
    markers = list((partial / ".niiv" / "done" / "0").iterdir())
    assert len(chunks) == len(markers) == written, "a chunk was written without its marker, or after the cancel"

    again = CountingBlocks(data)
    report = write_ome_zarr(out, layout, again, resume=True)
    assert again.calls == 5 - written and report.chunks_resumed == written
    for resumed, whole in zip(levels(out), levels(tmp_path / "whole.ome.zarr"), strict=True):
        np.testing.assert_array_equal(resumed, whole)
    np.testing.assert_array_equal(levels(out)[0], data)


def test_a_cancelled_write_without_resume_leaves_nothing(tmp_path):
    data = np.zeros((16, 16, 16), np.float32)
    out = tmp_path / "x.ome.zarr"
    with pytest.raises(WriteCancelled):
        write_ome_zarr(
            out, Layout(data.shape, data.dtype, chunks=(4, 16, 16)), ArrayBlocks(data), cancelled=lambda: True
        )
    assert not out.exists() and not partial_path(out).exists()
