"""Which shipped weights suit a volume, from what is known of it: its xy voxel size in physical
units (electron microscopy images at a few nm, light microscopy at a hundred or more), else its
pixel type. A suggestion with its reason, never a decision: the user can always pick others.
And what to say when weights meet a volume they were not made for: another alpha
(:func:`alpha_fit_note`), another kind of microscope (:func:`weights_fit_note`), sections or a psf
width they never learned (:func:`sections_fit_note`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data.degrade import THICK, Degradation
from ..data.io import NGFF_LENGTH_UNITS, ngff_unit
from ..errors import NiivInputError

EM_WEIGHTS = "niiv-em"
LM_WEIGHTS = "niiv-lm"
# xy voxels finer than this are electron microscopy, coarser than LM_FROM_NM light microscopy.
EM_BELOW_NM = 40.0
LM_FROM_NM = 80.0
# The sections each suggestion stands for: weights that learned none of them were made for the other kind of microscope.
MODALITY_SECTIONS = {EM_WEIGHTS: ("thick", "thin"), LM_WEIGHTS: ("psf",)}
MODALITY = {EM_WEIGHTS: "electron microscopy", LM_WEIGHTS: "light microscopy"}
# A psf blur this far (as a ratio) from the one the weights learned is another forward model: on the
# confocal nuclei at alpha 4, niiv-lm (learned FWHM = alpha) fell from +2.55 dB CF-PSNR over bicubic
# at FWHM 4 to +0.82 at FWHM 8 and -1.73 at FWHM 2.
FWHM_TOLERANCE = 1.25
# Weights trained for alpha 1.115 fit alpha 1.11538: an alpha within this fraction of the trained range is in it.
ALPHA_TOLERANCE = 0.01


@dataclass(frozen=True)
class Suggestion:
    weights: str
    reason: str


def suggest_weights(voxel_size: tuple[float, ...], unit: str | None, dtype: object) -> Suggestion:
    """The weights for a (z, y, x) volume of ``voxel_size`` in ``unit`` (None: not known) and ``dtype``."""
    name = ngff_unit(unit)
    if name is not None and name in NGFF_LENGTH_UNITS:
        nm = float(voxel_size[-1]) * NGFF_LENGTH_UNITS[name] * 1e9
        if nm < EM_BELOW_NM:
            return Suggestion(EM_WEIGHTS, f"xy voxels of {nm:.3g} nm: electron microscopy")
        if nm >= LM_FROM_NM:
            return Suggestion(LM_WEIGHTS, f"xy voxels of {nm:.3g} nm: light microscopy")
        size = f"xy voxels of {nm:.3g} nm (between EM and light microscopy), "
    else:
        size = "no physical voxel size, "
    kind = np.dtype(dtype)  # type: ignore[call-overload]
    if kind == np.uint8:
        return Suggestion(EM_WEIGHTS, size + "8-bit pixels as electron microscopes write them")
    if kind.kind in "ui" and kind.itemsize >= 2:
        return Suggestion(LM_WEIGHTS, size + f"{kind.itemsize * 8}-bit pixels as light-microscope cameras write them")
    return Suggestion(EM_WEIGHTS, size + f"{kind} pixels: the default")


def alpha_fit_note(trained: tuple[float, float] | None, alpha: float) -> str | None:
    """What to say of weights trained over the alphas ``trained`` (None: not known) used at
    ``alpha``: nothing within that range, a warning outside it."""
    if trained is None:
        return None
    lo, hi = trained
    # relative: the widget keeps alpha to 3 decimals (1.115 for 0.29 / 0.26 um), a file's voxel sizes
    # give it whole (1.11538); weights fine-tuned at one were noted as "outside" at the other
    if lo * (1 - ALPHA_TOLERANCE) <= alpha <= hi * (1 + ALPHA_TOLERANCE):
        return None
    span = f"alpha {lo:g}" if lo == hi else f"alpha {lo:g} to {hi:g}"
    return f"trained for {span}, used here at {alpha:g}: expect less than its card says"


def learned_sections(degradations: Sequence[object] | None) -> tuple[Degradation, ...]:
    """The forward models a weights card's ``degradations`` name (``['psf']``, ``['thick', 'thin']``,
    ``['psf:3']``); thick when it names none (the first round's weights) or none is readable."""
    out = []
    for d in degradations or ():
        try:
            out.append(d if isinstance(d, Degradation) else Degradation.parse(str(d)))
        except NiivInputError:
            continue
    return tuple(dict.fromkeys(out)) or (THICK,)


def _sections_list(sections: Sequence[Degradation]) -> str:
    return ", ".join(str(d) for d in sections)


def weights_fit_note(suggestion: Suggestion, learned: Sequence[object] | None) -> str | None:
    """What to say of weights that learned the sections ``learned`` (their card's degradations) used
    on a volume for which ``suggestion`` (:func:`suggest_weights`) was made: nothing when they
    learned sections of the suggested kind of microscope (psf for light, thick or thin for electron
    microscopy), else that the suggested weights suit it. Measured: niiv-lm on held-out FIB-SEM
    (alpha 8, thick) scores below bicubic; niiv-em on the confocal nuclei (alpha 4, psf) gains
    1.45 dB CF-PSNR less over bicubic than niiv-lm."""
    sections = learned_sections(learned)
    wanted = MODALITY_SECTIONS.get(suggestion.weights, ())
    if not wanted or any(d.kind in wanted for d in sections):
        return None
    return (
        f"learned {_sections_list(sections)} sections, not those of {MODALITY[suggestion.weights]}, and this "
        f"volume looks like {MODALITY[suggestion.weights]} ({suggestion.reason}): {suggestion.weights} suits it"
    )


def sections_fit_note(
    learned: Sequence[object] | None, told: bool, sections: Degradation | str, alpha: float
) -> str | None:
    """What to say of weights that learned the sections ``learned`` (their card's degradations) used
    on ``sections`` at ``alpha``; ``told``: they have an acquisition embedding, so the sections are
    passed to them (else they are ignored). Nothing when they learned these sections; a warning when
    they never learned that kind (a told model is given a thickness it never saw, an untold one
    reconstructs them as the sections it learned), or a psf blur far from the width they learned."""
    known = learned_sections(learned)
    given = sections if isinstance(sections, Degradation) else Degradation.parse(str(sections))
    kinds = [d for d in known if d.kind == given.kind]
    if not kinds:
        other = LM_WEIGHTS if given.kind == "psf" else EM_WEIGHTS
        use = (
            "told them, it is given sections it never saw"
            if told
            else "it is not told the sections and reconstructs them as those it learned"
        )
        return (
            f"learned {_sections_list(known)} sections, never {given.kind} ones ({use}): expect less than its card "
            f"says, possibly less than bicubic; {other} learned {given.kind} sections"
        )
    if given.kind != "psf":
        return None
    width = given.thickness(alpha)
    widths = [d.thickness(alpha) for d in kinds]
    if any(w / FWHM_TOLERANCE <= width <= w * FWHM_TOLERANCE for w in widths):
        return None
    learnt = " or ".join(f"{w:.3g}" for w in widths)
    spacing = " (one section spacing)" if any(d.fwhm is None for d in kinds) else ""
    return (
        f"learned a psf blur of FWHM {learnt} xy voxels{spacing} at alpha {alpha:g}, used here on one of {width:g}: "
        "expect less than its card says, possibly less than bicubic; fine-tune it on this volume with these sections"
    )
