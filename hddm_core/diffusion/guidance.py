"""Classifier-free guidance (Ho & Salimans 2022): the one implementation every sampler uses.

out = out_uncond + scale (out_cond - out_uncond), with the conditional and unconditional rows in
one batched call. The guided function can be a velocity field (the Euler samplers, and each
ensemble expert before mixing) or a raw network prediction (native DDIM guides eps-space, as
DDPM pipelines do): anything called as fn(x [B, ...], t [B], cond) -> [B, ...].
"""
from __future__ import annotations

from typing import Any, Callable

import torch

GuidedFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def concat_conditions(a: Any, b: Any) -> Any:
    """Stack two conditionings along the batch: tensors, dicts of tensors, or None."""
    if a is None and b is None:
        return None
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b.expand_as(a) if b.shape[0] == 1 else b], dim=0)
    if isinstance(a, dict):
        return {k: concat_conditions(a[k], b[k]) for k in a}
    raise TypeError(f"cannot batch conditioning of type {type(a).__name__}; use a tensor, dict or None")


def check_scale(scale: float) -> float:
    if not scale >= 0:
        raise ValueError(f"guidance scale must be >= 0, got {scale}")
    return float(scale)


def classifier_free_guidance(fn: GuidedFn, scale: float, null_cond: Any) -> GuidedFn:
    """fn guided at `scale` against null_cond (batch 1, broadcast, or the same batch as cond).

    scale = 1 returns fn unchanged (one pass, no unconditional rows).
    """
    scale = check_scale(scale)
    if scale == 1.0:
        return fn

    def guided(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        out = fn(torch.cat([x, x]), torch.cat([t, t]), concat_conditions(cond, null_cond))
        out_cond, out_uncond = out.chunk(2)
        return out_uncond + scale * (out_cond - out_uncond)

    return guided
