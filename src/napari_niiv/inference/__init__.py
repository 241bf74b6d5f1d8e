"""Trained models to pixels: settings, geometry, engine, reconstructor, views, workers, the lazy
isotropic volume, the resumable output store and task runners. No napari, no training."""
