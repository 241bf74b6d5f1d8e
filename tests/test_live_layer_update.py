"""How the live layer takes a result: napari should recompute no more than the result changes.

A result of the layer's shape and dtype is copied into the layer's own array (one refresh, no data
event: napari recomputes the viewer's dims on each data event); any other result replaces the
array. Either way the layer ends up showing exactly the result, on the result's grid."""

from __future__ import annotations

import numpy as np
from napari.layers import Image

from napari_niiv._napari.live_view import LiveView
from napari_niiv.inference.viewport import ViewGrid

STEP = (8.0, 1.0, 1.0)


def grid(shape: tuple[int, int, int], start: tuple[float, float, float], step=STEP) -> ViewGrid:
    return ViewGrid(tuple(np.arange(n, dtype=np.float64) for n in shape), 1, 1.0, start, step)


def shown(layer: Image) -> np.ndarray:
    """What napari sliced for display (the layer's first plane along axis 0 here)."""
    return np.asarray(layer._slice.image.view)


def result(shape, seed) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_a_result_of_the_layers_shape_is_copied_into_its_array_and_shown_on_its_grid():
    out = Image(np.zeros((6, 1, 5), np.float32), scale=STEP)
    own = out.data
    image = result((6, 1, 5), 0)
    LiveView._move_to(out, grid((6, 1, 5), (0.0, 3.0, 2.0)), image)
    assert out.data is own
    np.testing.assert_array_equal(out.data, image)
    np.testing.assert_allclose(out.translate, (0.0, 3.0, 2.0))
    np.testing.assert_array_equal(shown(out), image[0])
    image[:] = 0  # the sender's array is not the layer's
    assert out.data.max() > 0

    zoomed = result((6, 1, 5), 1)  # same shape, new scale
    LiveView._move_to(out, grid((6, 1, 5), (0.0, 3.0, 2.0), (4.0, 0.5, 0.5)), zoomed)
    np.testing.assert_allclose(out.scale, (4.0, 0.5, 0.5))
    np.testing.assert_array_equal(shown(out), zoomed[0])


def test_a_result_of_another_shape_dtype_or_a_read_only_layer_replaces_the_array():
    out = Image(np.zeros((6, 1, 5), np.float32), scale=STEP)
    bigger = result((7, 1, 9), 2)
    LiveView._move_to(out, grid((7, 1, 9), (0.0, 3.0, 0.0)), bigger)
    assert out.data is bigger and out.data.shape == (7, 1, 9)
    np.testing.assert_array_equal(shown(out), bigger[0])

    as64 = result((7, 1, 9), 3).astype(np.float64)
    LiveView._move_to(out, grid((7, 1, 9), (0.0, 3.0, 0.0)), as64)
    assert out.data is as64

    frozen = result((7, 1, 9), 4)
    frozen.flags.writeable = False
    out.data = frozen
    again = result((7, 1, 9), 5)
    LiveView._move_to(out, grid((7, 1, 9), (0.0, 3.0, 0.0)), again)
    assert out.data is again
    np.testing.assert_array_equal(frozen, result((7, 1, 9), 4))  # never written into
    np.testing.assert_array_equal(shown(out), again[0])


def test_with_naparis_asynchronous_slicing_a_result_replaces_the_array(monkeypatch):
    """napari would slice the array on its own thread while the next result is copied in."""
    from napari.settings import get_settings

    from napari_niiv._napari import live_view

    assert live_view._async_slicing() is bool(get_settings().experimental.async_)  # napari's own setting
    monkeypatch.setattr(live_view, "_async_slicing", lambda: True)  # not napari's settings: they save to disk
    out = Image(np.zeros((6, 1, 5), np.float32), scale=STEP)
    own = out.data
    image = result((6, 1, 5), 6)
    LiveView._move_to(out, grid((6, 1, 5), (0.0, 3.0, 2.0)), image)
    assert out.data is image and not own.any()
