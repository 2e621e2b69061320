"""Stateless Euler ODE sampling from t = 1 (noise) to t = 0 (data), guidance, per-sample seeds.

x_{t - dt} = x_t - v(x_t, t) dt with v = d x_t / dt on the sampler's path (linear by default).
History lives in local variables; nothing here keeps state between calls.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from hddm_core.diffusion.schedules import LinearPath, Schedule

VelocityFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
GRIDS = ("uniform", "shifted")


def time_grid(steps: int, kind: str = "uniform", shift: float = 1.0, t_max: float = 1.0,
              t_min: float = 0.0) -> torch.Tensor:
    """Descending times [steps + 1] from t_max to t_min (float64).

    "shifted" applies SD3's resolution shift t' = s t / (1 + (s - 1) t), spending more steps at
    high noise for s > 1.
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    t = torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        return t
    if kind == "shifted":
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        return shift * t / (1 + (shift - 1) * t)
    raise ValueError(f"unknown grid {kind!r}; valid: {list(GRIDS)}")


def per_sample_noise(seeds: Sequence[int], shape: Sequence[int], dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Noise [len(seeds), *shape] where row i depends only on seeds[i] (EDM's per-image RNG).

    Sample i therefore sees the same noise in every routing variant, batch size and shard.
    """
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s)), dtype=torch.float32)
            for s in seeds]
    return torch.stack(rows).to(device=device, dtype=dtype)


def euler_sample(velocity: VelocityFn, noise: torch.Tensor, grid: torch.Tensor, cond: Any = None, *,
                 sampler: Schedule | None = None, progress: bool = False,
                 callback: Callable[[int, float, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Integrate dx/dt = v from grid[0] down to grid[-1]; x starts at sigma(t_max) * noise.

    At t_max = 1 on the linear path this is pure noise; at t_max < 1 it is the noise part only,
    which is what image-to-image style partial sampling would replace.
    """
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.ndim != 1 or grid.numel() < 2 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"grid must be a strictly descending 1-D tensor with >= 2 entries, got {grid}")
    sampler = sampler or LinearPath()
    x = noise * float(sampler.sigma(grid[0]))
    steps = range(len(grid) - 1)
    for i in tqdm(steps, desc="sampling", disable=not progress, leave=False):
        t, t_next = float(grid[i]), float(grid[i + 1])
        t_batch = torch.full((x.shape[0],), t, dtype=torch.float64)
        v = velocity(x, t_batch, cond)
        x = x - v * (t - t_next)  # Euler step: x_{t - dt} = x_t - v dt
        if callback is not None:
            callback(i, t, x)
    return x


def concat_conditions(a: Any, b: Any) -> Any:
    """Stack two conditionings along the batch: tensors, dicts of tensors, or None."""
    if a is None and b is None:
        return None
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b.expand_as(a) if b.shape[0] == 1 else b], dim=0)
    if isinstance(a, dict):
        return {k: concat_conditions(a[k], b[k]) for k in a}
    raise TypeError(f"cannot batch conditioning of type {type(a).__name__}; use a tensor, dict or None")


def classifier_free_guidance(velocity: VelocityFn, scale: float, null_cond: Any) -> VelocityFn:
    """v = v_uncond + scale (v_cond - v_uncond), both passes in one batched call (Ho & Salimans 2022).

    null_cond has batch 1 (broadcast) or the same batch as cond. scale = 1 returns the conditional
    field unchanged.
    """
    if scale < 0:
        raise ValueError(f"guidance scale must be >= 0, got {scale}")

    def guided(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if scale == 1.0:
            return velocity(x, t, cond)
        v = velocity(torch.cat([x, x]), torch.cat([t, t]), concat_conditions(cond, null_cond))
        v_cond, v_uncond = v.chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)

    return guided
