"""The confidence map in the real napari viewer (Xvfb): off by default; ticking it adds a map layer
exactly on the live layer and on a whole-volume layer (same scale, translate and shape), holding
the disagreement of the xz and yz reconstructions; unticking removes them and stops the work."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.slow  # a napari viewer

from tests.conftest import open_dock  # noqa: E402


def maps(viewer) -> list:
    return [layer for layer in viewer.layers if "niiv_confidence_of" in (layer.metadata or {})]


def wait_stage(qtbot, widget, stage: str, timeout: int = 60_000) -> None:
    def done() -> bool:
        view = widget.live_view
        return view is not None and not view.busy and bool(view.timings) and stage in view.timings[-1]

    qtbot.waitUntil(done, timeout=timeout)


def test_ticking_the_confidence_map_adds_layers_on_the_live_and_lazy_layers_and_unticking_removes_them(
    qtbot, make_napari_viewer, cremi64, tiny_user_weights
):
    from napari_niiv.inference import confidence
    from napari_niiv.inference.geometry import output_geometry
    from napari_niiv.inference.reconstructor import Reconstructor
    from napari_niiv.inference.views import ViewRenderer

    viewer = make_napari_viewer()
    layer = viewer.add_image(cremi64, name="cremi", scale=(40, 4, 4), translate=(3, -8, 12))
    widget = open_dock(viewer, "user/tiny")
    viewer.dims.order = (1, 0, 2)  # an xz view
    viewer.dims.set_point(1, -8 + 4 * 21)
    viewer.reset_view()
    assert widget.confidence_check.value is False  # off by default
    widget.precision_choice.value = "fp32"
    widget.live_check.value = True
    wait_stage(qtbot, widget, "niiv")
    qtbot.wait(200)
    assert maps(viewer) == [] and "confidence" not in widget.live_view.timings[-1]  # no map work when off

    widget.confidence_check.value = True
    wait_stage(qtbot, widget, "confidence")
    qtbot.wait(50)
    live, out = widget.live_view, widget.live_view.output
    cmap = live.confidence_output
    assert maps(viewer) == [cmap] and cmap.name == "cremi niiv confidence"
    # exactly on the live layer: same grid, same world placement
    assert cmap.data.shape == out.data.shape
    np.testing.assert_allclose(cmap.scale, out.scale)
    np.testing.assert_allclose(cmap.translate, out.translate)
    np.testing.assert_allclose(cmap.extent.world, out.extent.world)
    assert tuple(cmap.contrast_limits) == pytest.approx(confidence.contrast_limits(live._norm))
    # and it is |xz - yz| of this view, in the input's intensity units (not a made-up picture)
    grid, norm = live._grid, live._norm
    render = {
        o: ViewRenderer(layer.data, norm, Reconstructor(live.reconstructor.model, live.settings.replace(orientation=o)))
        for o in ("xz", "yz")
    }
    expect = confidence.to_intensity(np.abs(render["xz"].render(grid) - render["yz"].render(grid)), norm)
    np.testing.assert_allclose(cmap.data, expect, atol=1e-3 * (norm.high - norm.low))
    assert np.all(np.isfinite(cmap.data)) and cmap.data.max() > 0
    assert viewer.layers.index(cmap) == viewer.layers.index(out) + 1  # above the live layer
    assert [c for c in widget.volume_choice.choices if c is not None] == [layer]  # a map is never an input

    # the whole volume: a map layer on the lazy layer, level by level, filled as tiles arrive
    widget.reconstruct_button.native.click()
    qtbot.waitUntil(lambda: widget.preparing == 0, timeout=60_000)  # prepared on a thread
    iso = next(la for la in viewer.layers if la.name == "cremi isotropic (niiv)")
    lazy = iso.data[0].volume
    qtbot.waitUntil(lambda: len(maps(viewer)) == 2, timeout=10_000)
    lmap = next(m for m in maps(viewer) if m is not cmap)
    assert lmap.name == "cremi isotropic (niiv) confidence" and lmap.multiscale
    assert [d.shape for d in lmap.data] == [d.shape for d in iso.data]
    np.testing.assert_allclose(lmap.scale, iso.scale)
    np.testing.assert_allclose(lmap.translate, iso.translate)
    geometry = output_geometry(cremi64.shape, 10.0, 1.0, (40.0, 4.0, 4.0), (3.0, -8.0, 12.0))
    np.testing.assert_allclose(lmap.scale, geometry.voxel_size)
    np.testing.assert_allclose(lmap.translate, geometry.translation)
    qtbot.waitUntil(lambda: lazy.pending == 0 and len(lazy._maps) > 0, timeout=60_000)
    key = next(iter(lazy._maps))
    np.testing.assert_allclose(lazy._maps[key], lazy.compute_tiles(key)[1], atol=1e-3 * (norm.high - norm.low))

    widget.confidence_check.value = False
    qtbot.wait(100)
    assert maps(viewer) == [] and not lazy.confidence and not live.confidence
    assert out in viewer.layers and iso in viewer.layers  # only the maps go
    viewer.scene.camera.zoom *= 2  # a new view: niiv again, no map
    wait_stage(qtbot, widget, "niiv")
    qtbot.wait(200)
    assert maps(viewer) == [] and "confidence" not in widget.live_view.timings[-1]
