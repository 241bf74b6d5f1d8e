"""napari integration: the only part of napari-niiv that imports napari or Qt."""
