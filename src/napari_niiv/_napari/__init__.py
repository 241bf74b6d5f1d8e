"""napari integration: the only part of napari-niiv that imports napari or Qt.

Importing it (napari does when it loads any of the plugin's readers, samples, widget or
commands) checks napari's version and adds the layer right-click entry, which manifests cannot
contribute.
"""

import re

import napari

MIN_NAPARI = (0, 9)


def check_napari(version: str) -> None:
    """Refuse a napari older than 0.9, saying what to do. The live view and the whole-volume layer
    read the viewer's camera and canvas (``viewer.scene``, ``canvas.viewbox_size``), which napari
    has from 0.9 on: with an older one they failed inside Qt callbacks. napari's plugin manager
    installs the plugin without extras, so no napari bound of ours applies there."""
    found = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if found < MIN_NAPARI:
        need = ".".join(map(str, MIN_NAPARI))
        raise ImportError(
            f"napari-niiv needs napari {need} or newer, and this is napari {version}: upgrade it "
            f'(pip install -U "napari>={need}") and start napari again'
        )


check_napari(napari.__version__)

from .context_menu import register_layer_context_action  # noqa: E402  after the check: it uses napari 0.9's API

register_layer_context_action()
