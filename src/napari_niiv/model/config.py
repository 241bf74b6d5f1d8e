"""Architecture hyper-parameters, kept apart so weights files can record and rebuild a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

ATTENTION_SPACINGS = ("output", "input")
# The presets of NiivConfig.named, the default of training from scratch first: v1, which beat v2 at
# equal budget on a CPU (the cards of niiv-v1-fibsem-a8 and niiv-em, which is v1).
ARCHITECTURES = ("v1", "v2", "fast", "v2-input")
# Integer fields and their allowed ranges: generous for research, far below what breaks a machine.
_BOUNDS = {
    "latent_dim": (1, 1024),
    "encoder_blocks": (0, 64),
    "attention_radius": (0, 4),
    "mlp_hidden": (1, 4096),
    "mlp_layers": (1, 32),
    "pe_bands": (0, 16),
}


@dataclass(frozen=True)
class NiivConfig:
    """Shape of a niiv network.

    The defaults are the paper's v2 ("Interactive", 2025): a 6-block EDSR encoder, attention over
    the 3x3 neighbourhood of interpolated latents and a 5x256 MLP. ``v1()`` is the 2024 "Fast"
    variant (16 blocks, plain bilinear latent interpolation) kept for ablation.
    """

    latent_dim: int = 64
    encoder_blocks: int = 6
    attention: bool = True
    attention_radius: int = 1
    # How far apart the attention's neighbours are: "output", one isotropic output voxel (the
    # paper's; along z that is 1/alpha of an input pixel, nearly the same latent), or "input", one
    # input pixel on both axes (neighbours that carry other information).
    attention_spacing: str = "output"
    mlp_hidden: int = 256
    mlp_layers: int = 5
    pe_bands: int = 2
    residual: bool = True
    # Tell the encoder alpha and the sections' thickness (a learned shift of its features,
    # model.encoder.AcquisitionShift), for models trained over a range of both; off in the first
    # round's weights.
    acquisition_embedding: bool = False

    def __post_init__(self) -> None:
        """Every field within sane bounds, so a weights file cannot ask for a model that would
        exhaust memory (a million encoder blocks) or one that cannot be built."""
        for name, (lo, hi) in _BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):  # 24.0 or "24": a file edited by hand
                raise ValueError(f"architecture field {name}={value!r} must be a whole number from {lo} to {hi}")
            if not lo <= value <= hi:
                raise ValueError(f"architecture field {name}={value!r} is outside {lo}..{hi}")
        if self.attention_spacing not in ATTENTION_SPACINGS:
            raise ValueError(
                f"architecture field attention_spacing={self.attention_spacing!r} must be one of {ATTENTION_SPACINGS}"
            )
        for name in ("attention", "residual", "acquisition_embedding"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"architecture field {name}={getattr(self, name)!r} must be true or false")

    @classmethod
    def v2(cls) -> NiivConfig:
        return cls()

    @classmethod
    def v1(cls) -> NiivConfig:
        return cls(encoder_blocks=16, attention=False)

    @classmethod
    def fast(cls) -> NiivConfig:
        """niiv-fast: the first frame of a live view on a CPU. A 24-channel 4-block encoder and a
        3x48 MLP without attention: 3.5 % of v2's FLOPs per output pixel at alpha 8, so that a
        1920x1080 frame's arithmetic (50 GFLOP) is ~0.3 s at a 2-core AVX2 CPU's fp32 matmul peak.
        The 32-channel, 3x64 model before it (6.1 %, 88 GFLOP) could not be shown in 0.5 s there."""
        return cls(latent_dim=24, encoder_blocks=4, attention=False, mlp_hidden=48, mlp_layers=3)

    @classmethod
    def v2_input(cls) -> NiivConfig:
        """v2 with the attention's neighbours one input pixel apart (issue 14's experiment)."""
        return cls(attention_spacing="input")

    @classmethod
    def named(cls, name: str) -> NiivConfig:
        presets = {"v1": cls.v1, "v2": cls.v2, "fast": cls.fast, "v2-input": cls.v2_input}
        assert set(presets) == set(ARCHITECTURES)
        if name not in presets:
            raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    def preset(self) -> str | None:
        """The preset (``--arch``, :data:`ARCHITECTURES`) this configuration is, its acquisition
        embedding aside (niiv-em is v1 with one); None for any other configuration."""
        base = replace(self, acquisition_embedding=False)
        return next((n for n in ARCHITECTURES if NiivConfig.named(n) == base), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NiivConfig:
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict):
            raise ValueError(f"the architecture must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}")
        return cls(**data)

    @property
    def receptive_radius(self) -> int:
        """Input pixels on each side that influence one latent (14 for 6 blocks: 29x29 field)."""
        return 2 * self.encoder_blocks + 2

    @property
    def decoder_inputs(self) -> int:
        """Latent, bilinear input value and sin/cos of each band for both coordinates."""
        return self.latent_dim + 1 + 4 * self.pe_bands
