"""What the layer command says about layers it cannot use: their real kind, even through the
proxy napari hands menu commands."""

from __future__ import annotations

import re

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


def test_a_diagonal_affine_is_a_scale_and_flips_or_rotations_are_refused_in_words() -> None:
    """napari maps data to the world as affine(scale * index + translate): a diagonal affine is
    voxel sizes (and a shift), as niiv's writer already read it; a rotation, a shear or a negative
    scale (a flip) is refused with what to do, whichever of scale and affine carries it."""
    from napari.layers import Image

    from napari_niiv._napari.layer_view import check_layer, layer_alpha, layer_frame, layer_geometry
    from napari_niiv.errors import NiivInputError
    from napari_niiv.inference.settings import InferenceSettings

    data = np.zeros((4, 16, 16), np.uint8)
    affine = np.diag([8.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (100.0, 0.0, -4.0)
    via_affine = check_layer(Image(data, name="aff", translate=(1.0, 0.0, 0.0), affine=affine))
    via_scale = Image(data, name="plain", scale=(8.0, 2.0, 2.0), translate=(108.0, 0.0, -4.0))
    assert layer_alpha(via_affine) == 4.0
    assert layer_frame(via_affine) == layer_frame(via_scale)
    settings = InferenceSettings(alpha=4.0)
    assert layer_geometry(via_affine, settings) == layer_geometry(via_scale, settings)
    # the world box napari draws is where niiv puts its output
    np.testing.assert_allclose(via_affine.extent.world, via_scale.extent.world)

    for layer, words in (
        (Image(data, name="flip_x", scale=(8, 1, -1)), "negative or zero scale on x (a flip)"),
        (Image(data, name="flip_z", affine=np.diag([-8.0, 1, 1, 1])), "negative or zero scale on z (a flip)"),
        (Image(data, name="turned", rotate=30), "rotated or sheared"),
        (Image(data, name="sheared", shear=(0.2, 0, 0)), "rotated or sheared"),
    ):
        with pytest.raises(NiivInputError, match=rf"'{layer.name}' .*{re.escape(words)}"):
            check_layer(layer)
