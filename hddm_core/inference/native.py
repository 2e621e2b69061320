"""Native sampling of one expert on its own schedule (deterministic DDIM, Song et al. 2021, eq. 12).

The study compares this with the same expert converted to velocity on the linear path and
integrated by Euler: same seeds, same number of network calls. DDIM step, expert time t -> t':
    (x0_hat, eps_hat) = prediction^-1(network(x_t, t)),   x_t' = alpha(t') x0_hat + sigma(t') eps_hat,
and the last step returns x0_hat (diffusers' set_alpha_to_one). Guidance is applied to the raw
prediction (eps-space CFG, as DDPM pipelines do).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from hddm_core.diffusion.conversion import ExpertDeclaration, Network
from hddm_core.diffusion.predictions import get_prediction
from hddm_core.diffusion.safeguards import Safeguards, SafeguardStats
from hddm_core.diffusion.sampling import concat_conditions, per_sample_noise, time_grid
from hddm_core.diffusion.schedules import get_schedule
from hddm_core.diffusion.time_inputs import network_time


def native_ddim_sample(network: Network, declaration: ExpertDeclaration, seeds: Sequence[int], shape: Sequence[int], *,
                       steps: int = 50, cond: Any = None, null_cond: Any = None, cfg_scale: float = 7.5,
                       guard: Safeguards | None = None, dtype=torch.float32, device="cpu"):
    """-> (samples [B, ...], SafeguardStats summed over steps)."""
    guard = guard or Safeguards()
    schedule = get_schedule(declaration.schedule)
    prediction = get_prediction(declaration.prediction)
    grid = time_grid(steps)
    x = per_sample_noise(seeds, shape, dtype=dtype, device=device)
    x = x * float(schedule.coefficients(grid[:1]).sigma)  # pure-noise start (alpha(1) x0 ignored, as DDPM does)
    total = SafeguardStats()
    guided = cond is not None and cfg_scale != 1.0
    B = x.shape[0]
    for i in range(steps):
        t = torch.full((B,), float(grid[i]), dtype=torch.float64)
        c = schedule.coefficients(t)
        net_t = network_time(t, declaration.time_input).to(device=x.device, dtype=x.dtype)
        with torch.no_grad():
            if guided:
                out = network(torch.cat([x, x]), torch.cat([net_t, net_t]), concat_conditions(cond, null_cond))
                p_c, p_u = out.chunk(2)
                pred = p_u + cfg_scale * (p_c - p_u)
            else:
                pred = network(x, net_t, cond)
        stats = SafeguardStats()
        x0, eps = prediction.to_x0_eps(pred, x, c, guard, stats)
        total = total.add(stats)
        if i == steps - 1:
            return x0, total
        cn = schedule.coefficients(torch.full((B,), float(grid[i + 1]), dtype=torch.float64))
        x = cn.alpha.to(x)[:, None].reshape(-1, *[1] * (x.ndim - 1)) * x0 + \
            cn.sigma.to(x)[:, None].reshape(-1, *[1] * (x.ndim - 1)) * eps
    return x, total
