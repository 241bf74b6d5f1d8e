"""napari integration: the only part of napari-niiv that imports napari or Qt.

Importing it (napari does when it loads any of the plugin's readers, samples, widget or
commands) adds the layer right-click entry, which manifests cannot contribute.
"""

from .context_menu import register_layer_context_action

register_layer_context_action()
