"""The one place where any expert's prediction becomes a velocity on the sampler's path.

Paper (HDDM, sec. 3): experts trained with DDPM (eps) or Flow Matching (velocity) are merged at
inference by converting every output into a common velocity space. Here, for an expert on any
schedule (linear, DDPM linear-beta, cosine) predicting eps, velocity or x0:

1. Match signal-to-noise: find the expert time t_e with sigma_e/alpha_e = sigma_s/alpha_s.
2. Rescale the state: x_e = x_s * n_e / n_s with n = sqrt(alpha^2 + sigma^2). At equal SNR this
   equals alpha_e/alpha_s = sigma_e/sigma_s, so x_e = alpha_e x0 + sigma_e eps exactly; unlike
   alpha_e/alpha_s it stays finite at the pure-noise end (alpha_s = 0).
3. Call the network with t_e in its own time convention, recover (x0_hat, eps_hat) - these are
   frame-independent - and form v_s = alpha_s' x0_hat + sigma_s' eps_hat.

On the linear path with an eps expert on the linear path this is exactly the paper's
x0_hat = (x_t - t eps)/(1 - t), v = eps - x0_hat. Safeguards: see safeguards.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from hddm_core.diffusion.predictions import Prediction, _bcast, get_prediction, is_velocity
from hddm_core.diffusion.safeguards import Safeguards, SafeguardStats
from hddm_core.diffusion.schedules import SCHEDULES, LinearPath, PathCoefficients, Schedule, get_schedule
from hddm_core.diffusion.time_inputs import check_time_input, network_time

# network(x_e [B, ...], net_t [B], cond) -> prediction [B, ...]
Network = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass(frozen=True)
class ExpertDeclaration:
    """What an expert's network predicts, on which schedule, and how it reads time."""

    prediction: str  # eps | velocity | x0 | v-prediction (predictions.PREDICTIONS)
    schedule: str  # linear | ddpm-linear | cosine
    time_input: str  # discrete-999 | scaled-1000 | continuous

    def __post_init__(self):
        schedule = get_schedule(self.schedule)
        if get_prediction(self.prediction).variance_preserving_only and not schedule.variance_preserving:
            vp = sorted(n for n, s in SCHEDULES.items() if s.variance_preserving)
            raise ValueError(f"prediction {self.prediction!r} is defined on variance-preserving schedules only, "
                             f"got schedule {self.schedule!r}; valid: {vp}")
        check_time_input(self.time_input)


def same_schedule(a: Schedule, b: Schedule) -> bool:
    return type(a) is type(b) and repr(a) == repr(b)


_SNR_MATCH_CACHE: dict[tuple[str, str, float], float] = {}
_SNR_MATCH_CACHE_MAX = 65536


def snr_matched_time(t: torch.Tensor, sampler: Schedule, expert: Schedule) -> torch.Tensor:
    """Expert time with the sampler's sigma/alpha at each t (float64 [B]).

    A sampler step holds one t for the whole batch and grids repeat across steps and variants, so
    the bisection runs once per distinct (schedules, t) and is cached: at tiny model sizes it was a
    measurable share of an ensemble step.
    """
    unique, inverse = torch.unique(t, return_inverse=True)
    key = (repr(sampler), repr(expert))
    values = [_SNR_MATCH_CACHE.get((*key, float(u))) for u in unique]
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        solved = expert.t_from_log_snr(sampler.log_snr(unique[missing]))
        if len(_SNR_MATCH_CACHE) > _SNR_MATCH_CACHE_MAX:
            _SNR_MATCH_CACHE.clear()
        for i, v in zip(missing, solved.tolist()):
            values[i] = v
            _SNR_MATCH_CACHE[(*key, float(unique[i]))] = v
    return torch.tensor(values, dtype=torch.float64)[inverse]


def map_to_expert_frame(x: torch.Tensor, t: torch.Tensor, sampler: Schedule, expert: Schedule):
    """Sampler state (x, t) -> (x_e, t_e, expert coefficients) at equal signal-to-noise ratio."""
    t64 = torch.as_tensor(t, dtype=torch.float64, device="cpu")
    if same_schedule(sampler, expert):
        return x, t64, expert.coefficients(t64)
    t_e = snr_matched_time(t64, sampler, expert)
    cs, ce = sampler.coefficients(t64), expert.coefficients(t_e)
    scale = torch.sqrt(ce.alpha**2 + ce.sigma**2) / torch.sqrt(cs.alpha**2 + cs.sigma**2)
    return x * _bcast(scale, x), t_e, ce


def damp_velocity(v: torch.Tensor, t: torch.Tensor, sampler_coeffs, guard: Safeguards, stats: SafeguardStats):
    """Adaptive damping of a converted velocity at high noise (formula in safeguards.py)."""
    if not (guard.enabled and guard.damping):
        return v
    c = sampler_coeffs
    v_ref = torch.sqrt(c.d_alpha**2 * guard.data_rms**2 + c.d_sigma**2)  # [B] float64
    rms = v.detach().double().flatten(1).pow(2).mean(1).sqrt().cpu()
    cap = guard.damping_ratio * v_ref
    active = (torch.as_tensor(t, dtype=torch.float64) >= guard.damping_t_min) & (rms > cap)
    if not bool(active.any()):
        return v
    factor = torch.where(active, cap / rms.clamp_min(1e-30), torch.ones_like(rms))
    stats.damped += int(active.sum().item())
    return v * _bcast(factor, v)


def velocity_from_prediction(pred, x, t, *, declaration: ExpertDeclaration, sampler: Schedule,
                             x_expert, expert_coeffs, guard: Safeguards):
    """Prediction already computed at (x_expert, t_e) -> (velocity on sampler path, stats)."""
    stats = SafeguardStats()
    if is_velocity(declaration.prediction) and same_schedule(sampler, get_schedule(declaration.schedule)):
        return pred, stats  # native: no algebra and no damping for a velocity on the sampler's path
    prediction: Prediction = get_prediction(declaration.prediction)
    x0_hat, eps_hat = prediction.to_x0_eps(pred, x_expert, expert_coeffs, guard, stats)
    cs = sampler.coefficients(torch.as_tensor(t, dtype=torch.float64, device="cpu"))
    v = _bcast(cs.d_alpha, x) * x0_hat + _bcast(cs.d_sigma, x) * eps_hat
    return damp_velocity(v, t, cs, guard, stats), stats


def expert_velocity(network: Network, x: torch.Tensor, t: torch.Tensor, cond: Any = None, *,
                    declaration: ExpertDeclaration, sampler: Schedule | None = None,
                    guard: Safeguards | None = None):
    """Velocity of one expert at sampler state (x [B, ...], t [B]); returns (v, SafeguardStats)."""
    sampler = sampler or LinearPath()
    guard = guard or Safeguards()
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0]).cpu()
    expert_schedule = get_schedule(declaration.schedule)
    x_e, t_e, ce = map_to_expert_frame(x, t, sampler, expert_schedule)
    net_t = network_time(t_e, declaration.time_input).to(device=x.device, dtype=x.dtype)
    pred = network(x_e, net_t, cond)
    return velocity_from_prediction(pred, x, t, declaration=declaration, sampler=sampler,
                                    x_expert=x_e, expert_coeffs=ce, guard=guard)


def velocity_at_shared_t(network: Network, x: torch.Tensor, t: float, cond: Any, *,
                         declaration: ExpertDeclaration, sampler: Schedule, guard: Safeguards):
    """expert_velocity for a batch that shares one time t (every Euler step of an ensemble).

    Same algebra and safeguards; the schedule mapping (SNR matching, a bisection for VP schedules)
    runs once per call instead of once per row.
    """
    n = x.shape[0]
    t1 = torch.tensor([t], dtype=torch.float64)
    x_e, t_e, ce = map_to_expert_frame(x, t1, sampler, get_schedule(declaration.schedule))
    net_t = network_time(t_e, declaration.time_input).to(device=x.device, dtype=x.dtype).expand(n)
    pred = network(x_e, net_t, cond)
    ce_n = PathCoefficients(*(torch.as_tensor(f).reshape(-1).expand(n) for f in
                              (ce.alpha, ce.sigma, ce.d_alpha, ce.d_sigma)))
    return velocity_from_prediction(pred, x, torch.full((n,), t, dtype=torch.float64), declaration=declaration,
                                    sampler=sampler, x_expert=x_e, expert_coeffs=ce_n, guard=guard)


class ExpertVelocityField:
    """One expert network presented to samplers as a velocity field v(x, t, cond) on the sampler's path.

    Samplers never branch on prediction type, schedule or time input: this wrapper owns them.
    `last_stats` holds the safeguard activation counts of the latest call.
    """

    def __init__(self, network: Network, declaration: ExpertDeclaration, sampler: Schedule | None = None,
                 guard: Safeguards | None = None):
        self.network = network
        self.declaration = declaration
        self.sampler = sampler or LinearPath()
        self.guard = guard or Safeguards()
        self.last_stats = SafeguardStats()

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        v, self.last_stats = expert_velocity(self.network, x, t, cond, declaration=self.declaration,
                                             sampler=self.sampler, guard=self.guard)
        return v
