"""napari-niiv: interactive neural implicit isotropic reconstruction of anisotropic volumes."""

__version__ = "0.1.0"
