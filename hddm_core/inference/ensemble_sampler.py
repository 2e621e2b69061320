"""The heterogeneous ensemble sampler: route, dispatch sparsely, convert to velocity, mix, Euler step.

Per step at sampler time t (HDDM paper, sec. 3; Euler on the linear path, t = 1 -> 0):
1. Router (only when the routing mode needs one): logits = router(x_t, t_net) [B, K].
2. Weights w [B, K] from the routing mode (routing.py); zero = expert not run for that sample.
3. For each expert k with a non-zero column: gather its samples (one batched call per expert),
   with classifier-free guidance the conditional and unconditional rows go in the same call,
   and convert its prediction to a velocity through hddm_core.diffusion.conversion (with safeguards).
4. v = sum_k w_k v_k;  x_{t - dt} = x_t - v dt.
Cost of a step = one router call + sum over selected (sample, expert) pairs of expert rows
(x2 with guidance); never K x batch unless the routing mode selects every expert.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from hddm_core.diffusion.conversion import ExpertDeclaration, map_to_expert_frame, velocity_from_prediction
from hddm_core.diffusion.safeguards import Safeguards, SafeguardStats
from hddm_core.diffusion.sampling import concat_conditions, per_sample_noise, time_grid
from hddm_core.diffusion.schedules import LinearPath, PathCoefficients, Schedule, get_schedule
from hddm_core.diffusion.time_inputs import network_time
from hddm_core.inference.pool import EnsembleMember, ExpertPool, condition_batch, index_condition
from hddm_core.inference.routing import Routing, entropy, routing_weights

log = logging.getLogger(__name__)
Router = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # router(x [B, ...], t_net [B]) -> logits [B, K]
STAT_KEYS = ("x0_clamped", "alpha_floored", "sigma_floored", "damped")


@dataclass
class DispatchCounts:
    """Network calls and rows actually run, to check sparse dispatch (and for benchmarks)."""

    router_calls: int = 0
    router_rows: int = 0
    expert_calls: list[int] = field(default_factory=list)
    expert_rows: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"router_calls": self.router_calls, "router_rows": self.router_rows,
                "expert_calls": list(self.expert_calls), "expert_rows": list(self.expert_rows)}


@dataclass
class EnsembleResult:
    samples: torch.Tensor  # [B, ...] at t = 0
    times: torch.Tensor  # [steps] sampler t at which each step evaluated the field
    usage: torch.Tensor  # [steps, K] mean routing weight per expert (weight mass per expert per t)
    router_entropy: torch.Tensor  # [steps] mean entropy (nats) of p(k | x_t, t); NaN where no router ran
    weight_entropy: torch.Tensor  # [steps] mean entropy (nats) of the weights actually used
    safeguards: torch.Tensor  # [steps, K, 4] activation counts, columns STAT_KEYS
    counts: DispatchCounts
    expert_names: list[str]
    routing: Routing
    seeds: list[int]
    pool_events: list = field(default_factory=list)

    def safeguard_totals(self) -> dict:
        total = self.safeguards.sum(dim=(0, 1))
        return {k: int(v) for k, v in zip(STAT_KEYS, total.tolist())}

    def summary(self) -> dict:
        """JSON-friendly record of everything but the samples."""
        return {
            "routing": self.routing.to_dict(), "experts": self.expert_names, "seeds": self.seeds,
            "times": self.times.tolist(), "usage": self.usage.tolist(),
            "router_entropy": [None if v != v else v for v in self.router_entropy.tolist()],
            "weight_entropy": self.weight_entropy.tolist(),
            "safeguards_per_step": [{k: int(v) for k, v in zip(STAT_KEYS, row)} for row in self.safeguards.sum(1).tolist()],
            "safeguard_totals": self.safeguard_totals(), "dispatch": self.counts.as_dict(),
        }


def _null_rows(null_cond: Any, idx: torch.Tensor, batch: int, network, cond_rows: Any) -> Any:
    if null_cond is None:  # each expert's own learned null caption (DiTExpert.drop_captions)
        drop = getattr(network, "drop_captions", None)
        if drop is None:
            raise ValueError("classifier-free guidance needs null_cond, or experts with a learned null caption "
                             f"(a drop_captions method); {type(network).__name__} has none")
        first = cond_rows if isinstance(cond_rows, torch.Tensor) else next(iter(cond_rows.values()))
        return drop(cond_rows, torch.ones(len(idx), dtype=torch.bool, device=first.device))
    n = condition_batch(null_cond)
    if n == 1:
        return index_condition(null_cond, torch.zeros(len(idx), dtype=torch.long))
    if n != batch:
        raise ValueError(f"null_cond must have batch 1 or {batch}, got {n}")
    return index_condition(null_cond, idx)


def _stats_row(stats: SafeguardStats) -> torch.Tensor:
    return torch.tensor([getattr(stats, k) for k in STAT_KEYS], dtype=torch.long)


def velocity_at_shared_t(network, x: torch.Tensor, t: float, cond: Any, *, declaration: ExpertDeclaration,
                         sampler: Schedule, guard: Safeguards):
    """hddm_core.diffusion.conversion.expert_velocity for a batch that shares one time t (every Euler step).

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


def sample_ensemble(members: Sequence[EnsembleMember], seeds: Sequence[int], shape: Sequence[int], *,
                    router: Router | None = None, routing: Routing | None = None, cond: Any = None,
                    null_cond: Any = None, cfg_scale: float = 7.5, steps: int = 50,
                    grid: torch.Tensor | None = None, sampler: Schedule | None = None,
                    guard: Safeguards | None = None, router_time_input: str = "continuous",
                    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    offload: bool = False, pool: ExpertPool | None = None, progress: bool = False) -> EnsembleResult:
    """Sample len(seeds) images (latents) of `shape` from an ensemble of experts.

    cond: per-sample conditioning (tensor or dict of tensors with batch len(seeds)) or None for
    unconditional sampling (guidance is then off). cfg_scale: guidance scale (7.5 as in the paper;
    1 = no guidance, one pass per expert). null_cond: the unconditional conditioning (batch 1 or B);
    None means each expert's own learned null caption (networks with drop_captions, e.g. DiTExpert). Seeds fix each sample's noise independently of
    batch, routing mode and ensemble (per_sample_noise).
    """
    routing = routing or Routing.top1()
    pool = pool or ExpertPool(members, device=device, offload=offload)
    K = len(pool)
    routing.check(K, router is not None)
    sampler = sampler or LinearPath()
    guard = guard or Safeguards()
    seeds = [int(s) for s in seeds]
    B = len(seeds)
    if B == 0:
        raise ValueError("need at least one seed")
    if cond is not None and condition_batch(cond) != B:
        raise ValueError(f"cond has batch {condition_batch(cond)} but there are {B} seeds")
    guided = cond is not None and cfg_scale != 1.0
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
    grid = time_grid(steps) if grid is None else torch.as_tensor(grid, dtype=torch.float64)

    x = per_sample_noise(seeds, shape, dtype=dtype, device=device) * float(sampler.sigma(grid[0]))
    n_steps = len(grid) - 1
    usage = torch.zeros(n_steps, K, dtype=torch.float64)
    r_ent = torch.full((n_steps,), float("nan"), dtype=torch.float64)
    w_ent = torch.zeros(n_steps, dtype=torch.float64)
    stats_tab = torch.zeros(n_steps, K, len(STAT_KEYS), dtype=torch.long)
    counts = DispatchCounts(expert_calls=[0] * K, expert_rows=[0] * K)

    for i in tqdm(range(n_steps), desc=f"ensemble {routing.label}", disable=not progress, leave=False):
        t, t_next = float(grid[i]), float(grid[i + 1])
        t_b = torch.full((B,), t, dtype=torch.float64)
        logits = None
        if router is not None and routing.needs_router(t, True):
            t_net = network_time(t_b, router_time_input).to(device=x.device, dtype=x.dtype)
            with torch.no_grad():
                logits = router(x, t_net)  # [B, K]
            counts.router_calls += 1
            counts.router_rows += B
            r_ent[i] = entropy(torch.softmax(logits.detach().double().cpu(), -1)).mean()
        w = routing_weights(routing, logits, t, B, K)  # [B, K] float64 on CPU
        usage[i] = w.mean(0)
        w_ent[i] = entropy(w).mean()

        v_mix = torch.zeros_like(x)
        used = []
        for k in range(K):
            idx = torch.nonzero(w[:, k] > 0).flatten()
            if idx.numel() == 0:
                continue  # sparse dispatch: expert k runs on no sample this step
            network = pool.network(k)
            used.append(k)
            idx_dev = idx.to(x.device)
            x_k = x[idx_dev]
            c_k = index_condition(cond, idx)
            if guided:  # conditional and unconditional rows in one call
                x_k = torch.cat([x_k, x_k])
                c_k = concat_conditions(c_k, _null_rows(null_cond, idx, B, network, c_k))
            with torch.no_grad():
                v_k, st = velocity_at_shared_t(network, x_k, t, c_k, declaration=pool.members[k].declaration,
                                               sampler=sampler, guard=guard)
            counts.expert_calls[k] += 1
            counts.expert_rows[k] += x_k.shape[0]
            stats_tab[i, k] = _stats_row(st)
            if guided:
                v_c, v_u = v_k.chunk(2)
                v_k = v_u + cfg_scale * (v_c - v_u)  # Ho & Salimans 2022, per expert before mixing
            wk = w[idx, k].to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
            v_mix.index_add_(0, idx_dev, wk * v_k.to(x.dtype))
        for k in used:
            pool.release(k)
        x = x - v_mix * (t - t_next)  # Euler step x_{t - dt} = x_t - v dt

    return EnsembleResult(samples=x, times=grid[:-1].clone(), usage=usage, router_entropy=r_ent,
                          weight_entropy=w_ent, safeguards=stats_tab, counts=counts,
                          expert_names=[m.name for m in pool.members], routing=routing, seeds=seeds,
                          pool_events=list(pool.events))
