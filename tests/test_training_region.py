"""Which voxels fine-tuning learns from and which planes it holds out (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_niiv.errors import NiivInputError
from napari_niiv.training.regions import box_region, split_training, visible_region, whole


def test_whole_volume_holds_out_its_last_planes():
    split = split_training([whole((32, 96, 96))], crop=64, alpha=10)
    assert split.z_ranges == [(0, 26)] and split.held_out[0] == slice(26, 32)
    assert split.held_out[1:] == (slice(0, 96), slice(0, 96))


def test_visible_region_spans_the_sliced_axis():
    coords = (np.array([0.3, 5.7, 11.2]), np.array([20.5]), np.array([10.5, 40.5, 70.5]))
    assert visible_region(coords, 1, (16, 64, 128)) == (slice(0, 12), slice(0, 64), slice(10, 71))


def test_box_drawn_in_an_xy_view_spans_z():
    rect = np.array([[7.0, 10.0, 20.0], [7.0, 10.0, 90.0], [7.0, 80.0, 90.0], [7.0, 80.0, 20.0]])
    assert box_region(rect, (30, 100, 100)) == (slice(0, 30), slice(10, 81), slice(20, 91))
    off_volume = np.add(rect, [0, 50, 50])
    assert box_region(off_volume, (30, 100, 100)) == (slice(0, 30), slice(60, 100), slice(70, 100))


def test_small_regions_are_skipped_and_none_left_is_an_error():
    small = (slice(0, 30), slice(0, 20), slice(0, 20))
    split = split_training([small, whole((30, 80, 80))], crop=64, alpha=8)
    assert len(split.regions) == 1
    with pytest.raises(NiivInputError, match="at least 64x64"):
        split_training([small], crop=64, alpha=8)
    with pytest.raises(NiivInputError, match="plane"):
        split_training([whole((2, 80, 80))], crop=64, alpha=8)


def test_overlapping_boxes_never_train_on_the_held_out_planes():
    """A second box over the held-out voxels trained on them (found by the training audit: box B
    inside box A trained on z 0-16 while A held out z 13-16)."""
    a = whole((16, 128, 128))
    b = (slice(0, 16), slice(10, 81), slice(10, 81))  # inside a: drawn in an xy view, all z
    c = (slice(13, 16), slice(0, 128), slice(0, 128))  # only the held-out planes
    d = (slice(4, 16), slice(0, 64), slice(0, 64))  # below them in part
    split = split_training([a, b, c, d], crop=64, alpha=4)
    assert split.held_out[0] == slice(13, 16)
    trained = {(r[0].start + lo, r[0].start + hi) for r, (lo, hi) in zip(split.regions, split.z_ranges, strict=True)}
    assert trained == {(0, 13), (4, 13)} and len(split.regions) == 3  # c had nothing left and is dropped
    beside = (slice(0, 16), slice(0, 64), slice(0, 64))  # no overlap in y, x with a held box elsewhere
    split = split_training([(slice(0, 16), slice(64, 128), slice(0, 128)), beside], crop=64, alpha=4)
    assert split.z_ranges == [(0, 13), (0, 16)]


def test_a_region_too_thin_to_hold_planes_out_says_what_to_do():
    """A 2-plane layer was told only that 3 planes are needed (the fine-tuning audit)."""
    said = r"has 2 xy plane\(s\): at least 3 .*; learn from a volume \(or a region\) with more xy planes"
    with pytest.raises(NiivInputError, match=said):
        split_training([whole((2, 96, 96))], crop=64, alpha=4)
