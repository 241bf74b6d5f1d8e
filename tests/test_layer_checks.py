"""What the layer command says about layers it cannot use: their real kind, even through the
proxy napari hands menu commands."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")


def test_a_proxied_labels_layer_is_named_as_labels() -> None:
    from napari.layers import Labels
    from napari.utils._proxies import PublicOnlyProxy

    from napari_niiv._napari.layer_view import check_layer
    from napari_niiv.errors import NiivInputError

    layer = PublicOnlyProxy(Labels(np.zeros((3, 4, 5), int), name="labels3d"))
    with pytest.raises(NiivInputError, match="'labels3d' is a Labels layer") as info:
        check_layer(layer)
    assert "Proxy" not in str(info.value)
