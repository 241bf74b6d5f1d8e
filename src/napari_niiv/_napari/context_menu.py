"""The layer list's right-click entry. napari (0.9) does not open that menu to manifests, so the
command is registered at runtime through napari's app model: a private API, hence guarded."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
CONTEXT_ACTION_ID = "napari-niiv.reconstruct_isotropic.layer_context"
CONTEXT_TITLE = "Reconstruct isotropic (niiv)"


def register_layer_context_action() -> bool:
    """Add "Reconstruct isotropic (niiv)" to the right-click menu of 3D image layers, once.
    False (and a log line) if this napari's app model has changed shape."""
    try:
        from app_model.types import Action
        from napari._app_model import get_app_model
        from napari._app_model.constants import MenuId
        from napari._app_model.context import LayerListSelectionContextKeys as LLSCK

        from .commands import reconstruct_isotropic

        app = get_app_model()
        if CONTEXT_ACTION_ID in app.commands:
            return True
        app.register_action(
            Action(
                id=CONTEXT_ACTION_ID,
                title=CONTEXT_TITLE,
                callback=reconstruct_isotropic,
                menus=[{"id": MenuId.LAYERLIST_CONTEXT, "group": "6_niiv", "when": LLSCK.active_layer_is_image_3d}],
                enablement=LLSCK.active_layer_is_image_3d & (LLSCK.num_selected_layers == 1),
            )
        )
        return True
    except Exception as exc:  # private API: never break the plugin over a menu entry
        log.warning("napari-niiv: could not add the layer right-click entry (%s); use Layers > niiv", exc)
        return False
