"""The one Euler ODE integrator, its time grids and per-sample seeds.

x_{s_next} = x_s - f(x_s, s) (s - s_next) on a strictly descending grid s. Every sampler in the
package is this loop with a different field f: a single expert or an ensemble on the sampler's
linear path (s = t, f = dx/dt, t = 1 noise -> 0 data), or native DDIM on an expert's own schedule
(s = sigma/alpha, state x/alpha; hddm_core.inference.native). History lives in local variables;
nothing here keeps state between calls (a field object may keep its own per-run records).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from hddm_core.diffusion.schedules import LinearPath, Schedule

VelocityFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
GRIDS = ("uniform", "shifted")


class NonFiniteError(FloatingPointError):
    """A velocity, router output or sample became NaN or infinite; the message names where."""


def bad_rows(x: torch.Tensor) -> torch.Tensor:
    """[B] bool: rows of x holding any NaN or infinity."""
    return ~torch.isfinite(x.detach()).reshape(x.shape[0], -1).all(1)


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


def check_grid(grid) -> torch.Tensor:
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.ndim != 1 or grid.numel() < 2 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"grid must be a strictly descending 1-D tensor with >= 2 entries, got {grid}")
    return grid


def _check_finite(x: torch.Tensor, what: str, step: int, s: float) -> None:
    bad = bad_rows(x)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        raise NonFiniteError(f"non-finite {what} at step {step} (s={s:.6g}) in {len(rows)} of {x.shape[0]} rows "
                             f"(first: {rows[:5]})")


def euler_integrate(field: VelocityFn, x: torch.Tensor, grid: torch.Tensor, cond: Any = None, *,
                    progress: bool = False, desc: str = "sampling",
                    callback: Callable[[int, float, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Integrate dx/ds = field(x, s, cond) from x at grid[0] down to grid[-1] (explicit Euler)."""
    grid = check_grid(grid)
    for i in tqdm(range(len(grid) - 1), desc=desc, disable=not progress, leave=False):
        s, s_next = float(grid[i]), float(grid[i + 1])
        v = field(x, torch.full((x.shape[0],), s, dtype=torch.float64), cond)
        _check_finite(v, "path velocity", i, s)
        x = x - v * (s - s_next)  # Euler step: x_{s - ds} = x_s - f ds
        _check_finite(x, "sample", i, s)
        if callback is not None:
            callback(i, s, x)
    return x


def euler_sample(velocity: VelocityFn, noise: torch.Tensor, grid: torch.Tensor, cond: Any = None, *,
                 sampler: Schedule | None = None, progress: bool = False, desc: str = "sampling",
                 callback: Callable[[int, float, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Integrate dx/dt = v on the sampler's path from grid[0] down to grid[-1]; x starts at sigma(t_max) noise.

    At t_max = 1 on the linear path this is pure noise; at t_max < 1 it is the noise part only,
    which is what image-to-image style partial sampling would replace.
    """
    grid = check_grid(grid)
    sampler = sampler or LinearPath()
    return euler_integrate(velocity, noise * float(sampler.sigma(grid[0])), grid, cond, progress=progress,
                           desc=desc, callback=callback)
