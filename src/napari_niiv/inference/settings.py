"""How to run inference, as one frozen, validated object that travels through the CLI, the
widget, the live view, the lazy layer and batch jobs; and the one definition of each choice list.

No torch import at module level: the CLI builds its parser from these lists.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..data.degrade import ALPHA_RANGE, Degradation, check_alpha
from ..errors import NiivInputError

ORIENTATIONS = ("auto", "xz", "yz", "both")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
SCALE_RANGE = (0.1, 10.0)
__all__ = [
    "ALPHA_RANGE",
    "DEVICES",
    "ORIENTATIONS",
    "PRECISIONS",
    "SCALE_RANGE",
    "InferenceSettings",
    "check_alpha",
    "check_scale",
]


def check_scale(scale: Any) -> float:
    """Output voxel in in-plane input voxels: a finite number in ``SCALE_RANGE``."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        value = math.nan
    lo, hi = SCALE_RANGE
    if not (math.isfinite(value) and lo <= value <= hi):
        raise NiivInputError(
            f"output scale {scale!r} is out of range; give {lo:g} (finer) to {hi:g} (coarser) times the "
            "in-plane voxel (1: isotropic at the xy resolution)"
        )
    return value


@dataclass(frozen=True)
class InferenceSettings:
    """alpha (anisotropy), the sections' axial profile, output scale, slice orientation, device,
    precision, compiled decoder.

    ``degradation`` is how the input's sections were made, in ``data.degrade``'s spelling
    (``thick``, ``thin``, ``psf[:FWHM]``): models with an acquisition embedding are told the
    sections' thickness it implies; the others ignore it.

    Construction validates every field; ``resolved()`` turns ``device`` and ``precision`` "auto"
    into what this machine gives, and :meth:`orientations` is the one place where orientation
    "auto" becomes slices.
    """

    alpha: float
    scale: float = 1.0
    orientation: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    compiled: bool = False
    degradation: str = "thick"

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        object.__setattr__(self, "degradation", str(Degradation.parse(str(self.degradation))))
        object.__setattr__(self, "scale", check_scale(self.scale))
        if self.orientation not in ORIENTATIONS:
            raise NiivInputError(f"orientation must be one of {', '.join(ORIENTATIONS)}; got {self.orientation!r}")
        if self.precision not in PRECISIONS:
            raise NiivInputError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        device = str(self.device)
        if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise NiivInputError(f"device must be one of {', '.join(DEVICES)} (or cuda:N); got {device!r}")
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "compiled", bool(self.compiled))

    def orientations(self, plane: str = "xz") -> tuple[str, ...]:
        """Slices that decode a view of ``plane`` ('xy', 'xz' or 'yz'; whole volumes count as 'xz'):
        'auto' decodes the plane on screen, xy views with xz slices; 'both' averages xz and yz."""
        if self.orientation == "both":
            return ("xz", "yz")
        if self.orientation == "auto":
            return ("yz",) if plane == "yz" else ("xz",)
        return (self.orientation,)

    @property
    def volume_orientation(self) -> str:
        """The orientation of a whole-volume reconstruction ('xz', 'yz' or 'both')."""
        orients = self.orientations("xz")
        return "both" if len(orients) == 2 else orients[0]

    def resolved(self) -> InferenceSettings:
        """The same settings with device and precision as this machine runs them (never "auto")."""
        from .devices import autocast_dtype, pick_device, precision_name

        device = pick_device(self.device)
        return replace(self, device=str(device), precision=precision_name(autocast_dtype(device, self.precision)))

    @property
    def sections(self) -> Degradation:
        """``degradation`` as the forward model it names."""
        return Degradation.parse(self.degradation)

    @property
    def thickness(self) -> float:
        """The sections' thickness in xy voxels at this alpha (what an acquisition embedding is told)."""
        return self.sections.thickness(self.alpha)

    def replace(self, **changes: Any) -> InferenceSettings:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
