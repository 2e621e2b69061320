"""Upper bounds on a checkpoint's architecture, and its size computed by formula before anything is built.

An untrusted manifest's `config` decides what the validator builds (on the meta device) and how many
bytes it expects, so every architecture field is bounded first. The bounds are derived from the
presets (hddm_core.models.presets): MARGIN x the largest preset's value, except input_size, which
allows SD-VAE latents of 1024 px images (128), and the router's cluster count, which is the
pipeline's own limit on K (1024, pipeline/params.py ClusterParams.n_clusters). The parameter count
is then computed arithmetically (the same formulas tests/models/test_param_counts.py pins against
the built models), so the expected weight bytes are known before any tensor or model exists.
"""
from __future__ import annotations

from hddm_core.models.presets import ADALN_KINDS, POOL_KINDS, PRESET_NAMES, DiTConfig, RouterConfig, expert_config

MARGIN = 2
_FIELDS = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio", "text_dim")
_PRESETS = [expert_config(p) for p in PRESET_NAMES]
ARCH_LIMITS: dict[str, float] = {f: MARGIN * max(getattr(c, f) for c in _PRESETS) for f in _FIELDS}
ARCH_LIMITS["input_size"] = 128  # 1024 px images in SD-VAE latents (8x down-sampling)
ARCH_LIMITS["num_patches"] = (ARCH_LIMITS["input_size"] // 2) ** 2  # tokens per image at the presets' patch 2
ARCH_LIMITS["num_clusters"] = 1024
FREQUENCY_EMBEDDING_SIZE = 256  # the timestep embedder's sinusoid width (models/layers.py)


def bound_errors(config: DiTConfig | RouterConfig) -> list[str]:
    """Every architecture field above its bound, one message each naming the value and the limit."""
    errors = []
    for name, limit in ARCH_LIMITS.items():
        value = getattr(config, name, None)
        if value is not None and value > limit:
            errors.append(f"config.{name} = {value} is above the limit {limit:g} (MARGIN x the largest preset)")
    return errors


def _lin(i: int, o: int) -> int:
    return i * o + o


def _common(c, single: bool) -> int:
    """Patchify, timestep embedder and (AdaLN-Single) the global t_block."""
    d = c.hidden_size
    return c.in_channels * c.patch_size ** 2 * d + d + _lin(FREQUENCY_EMBEDDING_SIZE, d) + _lin(d, d) \
        + (_lin(d, 6 * d) if single else 0)


def _block(d: int, mlp_ratio: float, single: bool, cross: bool) -> int:
    mlp = int(d * mlp_ratio)
    n = _lin(d, 3 * d) + _lin(d, d) + _lin(d, mlp) + _lin(mlp, d) + (6 * d if single else _lin(d, 6 * d))
    return n + (_lin(d, d) + _lin(d, 2 * d) + _lin(d, d) if cross else 0)  # cross-attention q, kv, proj


def parameter_count(config: DiTConfig | RouterConfig) -> int:
    """Trainable parameters of the expert (DiTConfig) or router (RouterConfig), by formula."""
    c, d = config, config.hidden_size
    single = c.adaln == ADALN_KINDS[0]  # AdaLN-Single: tables per block, one global t_block
    final = 2 * d if single else _lin(d, 2 * d)  # the last modulation (table or MLP)
    if isinstance(c, DiTConfig):
        text = _lin(c.text_dim, d) + _lin(d, d) + c.text_dim  # caption projection, null caption
        return c.depth * _block(d, c.mlp_ratio, single, True) + _common(c, single) + text + final \
            + _lin(d, c.patch_size ** 2 * c.in_channels)
    return c.depth * _block(d, c.mlp_ratio, single, False) + _common(c, single) + final + _lin(d, c.num_clusters) \
        + (d if c.pool == POOL_KINDS[1] else 0)  # a learned CLS token


def stored_elements(config: DiTConfig | RouterConfig) -> int:
    """Elements in the saved state dict: the parameters plus the fixed pos_embed buffer."""
    return parameter_count(config) + config.num_patches * config.hidden_size
