"""Architecture configs (frozen, JSON-serialisable) and presets by name.

Widths follow DiT (Peebles & Xie 2023, table 1): XL/2 1152 x 28 x 16 heads, L/2 1024 x 24 x 16,
B/2 768 x 12 x 12, S/2 384 x 12 x 6. Big presets default to SD-VAE latents (4 channels, 32 x 32
for 256 px) and a 768-wide text encoder; the tiny presets are pixel-space models for CPU tests
and the demo.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ADALN_KINDS = ("single", "per-block")  # PixArt-alpha AdaLN-Single | DiT's per-block adaLN MLP
POOL_KINDS = ("mean", "cls")

# Architecture presets: the one place their names are written (pipeline params, CLI choices and
# training configs derive from PRESET_NAMES). DiT sizes: name -> (hidden_size, depth, num_heads).
TINY, TINY_16 = "tiny", "tiny-16"
DIT_XL_2, DIT_L_2, DIT_B_2, DIT_S_2 = "XL/2", "L/2", "B/2", "S/2"
WIDTHS = {
    DIT_XL_2: (1152, 28, 16),
    DIT_L_2: (1024, 24, 16),
    DIT_B_2: (768, 12, 12),
    DIT_S_2: (384, 12, 6),
}
_LATENT_DEFAULTS = dict(input_size=32, patch_size=2, in_channels=4)
# tiny: ~1.2M parameters, 32 x 32 RGB (pixel space), MiniLM-width (384) text.
_TINY = dict(input_size=32, patch_size=2, in_channels=3, hidden_size=128, depth=4, num_heads=4)
# tiny-16: ~0.3M parameters, 16 x 16 RGB: the fastest network that still has every part.
_TINY16 = dict(input_size=16, patch_size=2, in_channels=3, hidden_size=64, depth=2, num_heads=2)


def _check_common(cfg) -> None:
    def positive(name):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(cfg).__name__}.{name} must be a positive integer, got {value!r}")

    for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads"):
        positive(name)
    if cfg.input_size % cfg.patch_size:
        raise ValueError(f"input_size {cfg.input_size} is not divisible by patch_size {cfg.patch_size}")
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
    if cfg.hidden_size % 4:
        raise ValueError(f"hidden_size {cfg.hidden_size} must be a multiple of 4 (2-D sin-cos positions)")
    if not (isinstance(cfg.mlp_ratio, (int, float)) and cfg.mlp_ratio > 0):
        raise ValueError(f"mlp_ratio must be a positive number, got {cfg.mlp_ratio!r}")
    if cfg.adaln not in ADALN_KINDS:
        raise ValueError(f"adaln {cfg.adaln!r} is not one of {list(ADALN_KINDS)}")


class _Serialisable:
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}.from_dict needs a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid: {sorted(names)}")
        return cls(**data)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DiTConfig(_Serialisable):
    """Expert network: DiT backbone, cross-attention to text, AdaLN-Single by default."""

    input_size: int = 32  # latent (or pixel) height = width
    patch_size: int = 2
    in_channels: int = 4  # 4: SD-VAE latents; 3: pixels. Output has the same channels.
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    text_dim: int = 768  # width of the text encoder's token embeddings (projected inside)
    adaln: str = "single"  # "per-block" exists to count and compare (DiT-style 6 x D MLP per block)
    preset: str = "custom"

    def __post_init__(self):
        _check_common(self)
        if not isinstance(self.text_dim, int) or self.text_dim <= 0:
            raise ValueError(f"DiTConfig.text_dim must be a positive integer, got {self.text_dim!r}")

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2


@dataclass(frozen=True)
class RouterConfig(_Serialisable):
    """Router: DiT classifier over (x_t, t) only, no text; K logits from a pooled or CLS head."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_clusters: int = 8
    adaln: str = "per-block"  # DiT-B/2 as published (the paper's 129M router)
    pool: str = "mean"
    preset: str = "custom"

    def __post_init__(self):
        _check_common(self)
        if not isinstance(self.num_clusters, int) or self.num_clusters < 1:
            raise ValueError(f"RouterConfig.num_clusters must be an integer >= 1, got {self.num_clusters!r}")
        if self.pool not in POOL_KINDS:
            raise ValueError(f"pool {self.pool!r} is not one of {list(POOL_KINDS)}")

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2


def _preset_fields(name: str) -> dict:
    if name in WIDTHS:
        hidden, depth, heads = WIDTHS[name]
        return dict(_LATENT_DEFAULTS, hidden_size=hidden, depth=depth, num_heads=heads)
    if name == TINY:
        return dict(_TINY)
    if name == TINY_16:
        return dict(_TINY16)
    raise ValueError(f"unknown architecture preset {name!r}; valid: {PRESET_NAMES}")


PRESET_NAMES = [*WIDTHS, TINY, TINY_16]


def expert_config(preset: str, **overrides) -> DiTConfig:
    """DiTConfig for a preset name; overrides (text_dim, in_channels, input_size, ...) are validated."""
    fields = _preset_fields(preset)
    if preset in (TINY, TINY_16):
        fields["text_dim"] = 384  # all-MiniLM-L6-v2, the text encoder the tests can load offline
    return DiTConfig(**{**fields, "preset": preset, **overrides})


def router_config(preset: str, num_clusters: int, **overrides) -> RouterConfig:
    return RouterConfig(**{**_preset_fields(preset), "preset": preset, "num_clusters": num_clusters, **overrides})
