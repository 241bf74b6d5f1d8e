"""napari-niiv: interactive neural implicit isotropic reconstruction of anisotropic volumes."""

import os

# torch's OpenMP (libgomp on Linux) lets idle threads spin, waiting for the next operation. With
# anything else on the cores (napari's software OpenGL, a browser, another job) the spinning
# threads take CPU from the ones with work: with one of two cores busy, a 1920x1080 niiv-fast view
# took 1.06 s instead of 0.41 s, the full model's 9.3 s instead of 6.0 s. libgomp reads this once,
# when torch first loads it, so it is set here, before any import of torch; a user's value is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
