"""Native sampling of one expert on its own schedule: deterministic DDIM (Song et al. 2021, eq. 12).

The study compares this with the same expert converted to velocity on the linear path and
integrated by Euler: same seeds, same number of network calls. DDIM is the Euler method of
hddm_core.diffusion.sampling applied to the probability-flow ODE written in y = x / alpha over
lambda = sigma / alpha, where it reads dy/dlambda = eps_hat (exactly, for any schedule):
    y' = y - eps_hat (lambda - lambda'),   i.e.   x_t' = alpha(t') x0_hat + sigma(t') eps_hat.
The lambda grid is sigma/alpha at the expert times of time_grid(steps) and ends at lambda = 0
(alpha = 1), so the last step returns x0_hat (diffusers' set_alpha_to_one). Guidance is applied to
the raw prediction (eps-space CFG, as DDPM pipelines do). The baseline runs without safeguards:
it is the plain DDIM recursion, so it shows what the conversion's safeguards change.
A schedule that reaches pure noise (cosine: alpha(1) ~ 6e-17) puts y = x/alpha out of reach, so it
is refused; sample such an expert through the Euler sampler on the linear path.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from hddm_core.diffusion.conversion import ExpertDeclaration, Network
from hddm_core.diffusion.guidance import classifier_free_guidance
from hddm_core.diffusion.predictions import _bcast, get_prediction
from hddm_core.diffusion.safeguards import Safeguards, SafeguardStats
from hddm_core.diffusion.sampling import euler_integrate, per_sample_noise, time_grid
from hddm_core.diffusion.schedules import get_schedule
from hddm_core.diffusion.time_inputs import network_time

MIN_START_ALPHA = 1e-4  # y = x/alpha at t = 1 within 1e4 |x|: float64 rounding stays below 1e-12


def native_ddim_sample(network: Network, declaration: ExpertDeclaration, seeds: Sequence[int], shape: Sequence[int], *,
                       steps: int = 50, cond: Any = None, null_cond: Any = None, cfg_scale: float = 7.5,
                       dtype=torch.float32, device="cpu") -> torch.Tensor:
    """-> samples [B, ...]."""
    guard = Safeguards.off()
    schedule = get_schedule(declaration.schedule)
    prediction = get_prediction(declaration.prediction)
    times = time_grid(steps)[:-1]  # expert times at which the network is called
    coeffs = schedule.coefficients(times)
    if float(coeffs.alpha[0]) < MIN_START_ALPHA:
        raise ValueError(f"native DDIM needs alpha(t=1) >= {MIN_START_ALPHA} on the expert's schedule, got "
                         f"{float(coeffs.alpha[0]):.3g} on {declaration.schedule!r}; sample it with sample_ensemble")
    lam = torch.cat([coeffs.sigma / coeffs.alpha, torch.zeros(1, dtype=torch.float64)])  # ends at alpha = 1
    at_lambda = {float(lam[i]): i for i in range(steps)}
    predict = network if cond is None else classifier_free_guidance(network, cfg_scale, null_cond)

    def eps_field(y: torch.Tensor, lam_b: torch.Tensor, c: Any) -> torch.Tensor:
        i = at_lambda[float(lam_b[0])]
        B = y.shape[0]
        t = times[i].expand(B)
        c_t = schedule.coefficients(t)
        x = _bcast(c_t.alpha, y) * y
        net_t = network_time(t, declaration.time_input).to(device=x.device, dtype=x.dtype)
        with torch.no_grad():
            pred = predict(x, net_t, c)
        _, eps = prediction.to_x0_eps(pred, x, c_t, guard, SafeguardStats())
        return eps  # dy/dlambda

    # pure-noise start x = sigma(t_max) noise (alpha(t_max) x0 ignored, as DDPM does), y = x / alpha
    y = per_sample_noise(seeds, shape, dtype=dtype, device=device) * float(lam[0])
    return euler_integrate(eps_field, y, lam, cond, desc="native DDIM")
