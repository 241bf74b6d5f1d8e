"""Every layer niiv makes says the input's unit, and they agree (the real viewer, Xvfb).

napari warns "Inconsistent units across layers" and drops units for rendering (the scale bar) when
layers disagree; the live and the whole-volume layer take the unit from one function
(``layer_view.layer_unit``: napari's units, else the reader's ``metadata["unit"]``)."""

from __future__ import annotations

import logging

import pytest

from napari_niiv.inference.settings import InferenceSettings
from tests.conftest import TINY, random_model

pytest.importorskip("napari")
pytestmark = pytest.mark.slow  # a napari viewer


def units(layer) -> list[str]:
    return [str(u) for u in layer.units]


@pytest.mark.parametrize(
    ("given", "expected"),
    [({"units": ("um", "um", "um")}, "micrometer"), ({"metadata": {"unit": "nanometer"}}, "nanometer")],
    ids=["napari units", "unit in metadata only"],
)
def test_live_and_lazy_layers_carry_the_inputs_unit(qtbot, make_napari_viewer, cremi64, caplog, given, expected):
    from napari_niiv._napari.commands import prepare_isotropic_layer, show_isotropic_layer
    from napari_niiv._napari.live_view import LiveView

    viewer = make_napari_viewer()
    layer = viewer.add_image(cremi64, name="cremi", scale=(40, 4, 4), **given)
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, 4 * 21)
    viewer.reset_view()
    settings = InferenceSettings(alpha=10.0, precision="fp32", device="cpu")
    live = LiveView(viewer, layer, random_model(TINY, seed=1), settings)
    caplog.set_level(logging.WARNING)
    try:
        qtbot.waitUntil(lambda: live.output is not None and live.output in viewer.layers, timeout=60_000)
        prepared = prepare_isotropic_layer(layer, settings, weights="niiv-em")
        lazy = show_isotropic_layer(viewer, prepared)
        assert units(live.output) == units(lazy) == [expected] * 3
        if "units" in given:  # the input's own units agree too, so napari keeps them
            assert units(layer) == [expected] * 3
            assert not [r for r in caplog.records if "Inconsistent units" in r.getMessage()]
            assert [str(u) for u in viewer.dims.units] == [expected] * 3
    finally:
        live.close()
        prepared.lazy.close()
