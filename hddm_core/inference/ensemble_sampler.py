"""The heterogeneous ensemble sampler: the ensemble velocity field integrated by the one Euler integrator.

sample_ensemble builds an EnsembleVelocityField (ensemble_field.py: routing, sparse dispatch,
conversion, guidance) and hands it to hddm_core.diffusion.sampling.euler_sample (linear path,
t = 1 -> 0), then packs the field's per-step records into an EnsembleResult.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from hddm_core.diffusion.guidance import check_scale
from hddm_core.diffusion.safeguards import Safeguards
from hddm_core.diffusion.sampling import euler_sample, per_sample_noise, time_grid
from hddm_core.diffusion.schedules import LinearPath, Schedule
from hddm_core.inference.ensemble_field import STAT_KEYS, DispatchCounts, EnsembleVelocityField, Router
from hddm_core.inference.pool import EnsembleExpertHandle, ExpertPool, condition_batch
from hddm_core.inference.routing import Routing

log = logging.getLogger(__name__)


@dataclass
class EnsembleResult:
    samples: torch.Tensor  # [B, ...] at t = 0
    times: torch.Tensor  # [steps] sampler t at which each step evaluated the field
    usage: torch.Tensor  # [steps, K] mean routing weight per expert (weight mass per expert per t)
    router_entropy: torch.Tensor  # [steps] mean entropy (nats) of p(k | x_t, t); NaN where no router ran
    weight_entropy: torch.Tensor  # [steps] mean entropy (nats) of the weights actually used
    safeguards: torch.Tensor  # [steps, K, 4] activation counts, columns STAT_KEYS
    nonfinite: torch.Tensor  # [steps, K] rows whose non-finite velocity was dropped (policy "drop")
    router_nonfinite: torch.Tensor  # [steps] router rows with non-finite logits, routed uniformly ("drop")
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
            "nonfinite_dropped": dict(zip(self.expert_names, self.nonfinite.sum(0).tolist())),
            "router_nonfinite": int(self.router_nonfinite.sum()),
        }


def sample_ensemble(members: Sequence[EnsembleExpertHandle], seeds: Sequence[int], shape: Sequence[int], *,
                    router: Router | None = None, routing: Routing | None = None, cond: Any = None,
                    null_cond: Any = None, cfg_scale: float = 7.5, steps: int = 50,
                    grid: torch.Tensor | None = None, sampler: Schedule | None = None,
                    guard: Safeguards | None = None, router_time_input: str = "continuous",
                    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    offload: bool = False, pool: ExpertPool | None = None, progress: bool = False,
                    data_mean: float | None = None, data_rms: float | None = None,
                    nonfinite: str = "fail") -> EnsembleResult:
    """Sample len(seeds) images (latents) of `shape` from an ensemble of experts.

    cond: per-sample conditioning (tensor or dict of tensors with batch len(seeds)) or None for
    unconditional sampling (guidance is then off). cfg_scale: guidance scale (7.5 as in the paper;
    1 = no guidance, one pass per expert). null_cond: the unconditional conditioning (batch 1 or B);
    None means each expert's own learned null caption (networks with drop_captions, e.g. DiTExpert).
    Seeds fix each sample's noise independently of batch, routing mode and ensemble (per_sample_noise).
    data_mean, data_rms: the run's latent statistics for the conversion (docs/safeguards.md); they
    override the guard's values (defaults 0 and 1: centred unit-scale latents).
    nonfinite: "fail" (default) raises NonFiniteError naming the expert or router and the step at the
    first NaN/inf; "drop" drops such rows from the mix and counts them (ensemble_field.py).
    """
    routing = routing or Routing.top1()
    pool = pool or ExpertPool(members, device=device, offload=offload)
    routing.check(len(pool), router is not None)
    sampler = sampler or LinearPath()
    guard = guard or Safeguards()
    stats = {k: float(v) for k, v in (("data_mean", data_mean), ("data_rms", data_rms)) if v is not None}
    guard = dataclasses.replace(guard, **stats) if stats else guard
    seeds = [int(s) for s in seeds]
    B = len(seeds)
    if B == 0:
        raise ValueError("need at least one seed")
    if cond is not None and condition_batch(cond) != B:
        raise ValueError(f"cond has batch {condition_batch(cond)} but there are {B} seeds")
    check_scale(cfg_scale)
    grid = time_grid(steps) if grid is None else torch.as_tensor(grid, dtype=torch.float64)
    velocity = EnsembleVelocityField(pool, routing=routing, router=router, sampler=sampler, guard=guard,
                                     null_cond=null_cond, cfg_scale=cfg_scale, router_time_input=router_time_input,
                                     nonfinite=nonfinite)
    noise = per_sample_noise(seeds, shape, dtype=dtype, device=device)
    x = euler_sample(velocity, noise, grid, cond, sampler=sampler, progress=progress,
                     desc=f"ensemble {routing.label}")
    return EnsembleResult(samples=x, times=torch.tensor(velocity.times, dtype=torch.float64),
                          usage=torch.stack(velocity.usage),
                          router_entropy=torch.tensor(velocity.router_entropy, dtype=torch.float64),
                          weight_entropy=torch.tensor(velocity.weight_entropy, dtype=torch.float64),
                          safeguards=torch.stack(velocity.safeguards), counts=velocity.counts,
                          nonfinite=torch.stack(velocity.dropped),
                          router_nonfinite=torch.tensor(velocity.router_nonfinite, dtype=torch.long),
                          expert_names=[m.name for m in pool.members], routing=routing, seeds=seeds,
                          pool_events=list(pool.events))
