"""The heterogeneous ensemble as one velocity field: route, dispatch sparsely, convert, guide, mix.

Per call at sampler time t (HDDM paper, sec. 3; the Euler integrator of
hddm_core.diffusion.sampling owns the step itself):
1. Router (only when the routing mode needs one): logits = router(x_t, t_net) [B, K].
2. Weights w [B, K] from the routing mode (routing.py); zero = expert not run for that sample.
3. For each expert k with a non-zero column: gather its samples (one batched call per expert;
   with classifier-free guidance the conditional and unconditional rows share that call) and
   convert its prediction to a velocity through hddm_core.diffusion.conversion (with safeguards).
4. v = sum_k w_k v_k.
Non-finite values (NaN, inf) are checked per call. Policy "fail" (default): the first non-finite
router row or expert velocity raises NonFiniteError naming the expert (or router) and step.
Policy "drop": an expert's non-finite rows are dropped from that row's mix (the remaining weights
renormalised; a row left with no expert still fails) and a non-finite router row is routed as if
its logits were all equal; both are counted in the records.
Cost of a call = one router call + sum over selected (sample, expert) pairs of expert rows
(x2 with guidance); never K x batch unless the routing mode selects every expert.
The field keeps one run's records (usage, entropies, safeguard counts, dispatch counts), one row
per call, so build a fresh field for every run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from hddm_core.diffusion.conversion import velocity_at_shared_t
from hddm_core.diffusion.guidance import classifier_free_guidance
from hddm_core.diffusion.safeguards import Safeguards, SafeguardStats
from hddm_core.diffusion.sampling import NonFiniteError, bad_rows
from hddm_core.diffusion.schedules import Schedule
from hddm_core.diffusion.time_inputs import network_time
from hddm_core.inference.pool import ExpertPool, condition_batch, index_condition
from hddm_core.inference.routing import Routing, entropy, routing_weights

Router = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # router(x [B, ...], t_net [B]) -> logits [B, K]
STAT_KEYS = ("x0_clamped", "low_alpha_clamped", "sigma_floored", "damped")
NONFINITE_POLICIES = ("fail", "drop")


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


class EnsembleVelocityField:
    """v(x, t, cond) of a routed ensemble on the sampler's path, with per-call records."""

    def __init__(self, pool: ExpertPool, *, routing: Routing, router: Router | None, sampler: Schedule,
                 guard: Safeguards, null_cond: Any = None, cfg_scale: float = 1.0,
                 router_time_input: str = "continuous", nonfinite: str = "fail"):
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"unknown non-finite policy {nonfinite!r}; valid: {list(NONFINITE_POLICIES)}")
        self.nonfinite = nonfinite
        # an expert's own data mean is its exact x0 at pure noise (docs/safeguards.md)
        self.guards = [guard if m.data_mean is None else dataclasses.replace(guard, data_mean=float(m.data_mean))
                       for m in pool.members]
        self.pool, self.routing, self.router, self.sampler, self.guard = pool, routing, router, sampler, guard
        self.null_cond, self.cfg_scale, self.router_time_input = null_cond, cfg_scale, router_time_input
        K = len(pool)
        self.counts = DispatchCounts(expert_calls=[0] * K, expert_rows=[0] * K)
        self.times: list[float] = []
        self.usage: list[torch.Tensor] = []
        self.router_entropy: list[float] = []
        self.weight_entropy: list[float] = []
        self.safeguards: list[torch.Tensor] = []
        self.dropped: list[torch.Tensor] = []  # [K] rows dropped per expert, per call
        self.router_nonfinite: list[int] = []  # router rows routed uniformly, per call

    def _nonfinite(self, who: str, what: str, bad: torch.Tensor, t: float) -> None:
        if self.nonfinite == "fail":
            rows = torch.nonzero(bad).flatten().tolist()
            raise NonFiniteError(f"{who} returned non-finite {what} at step {self._step} (t={t:.6g}) in "
                                 f"{len(rows)} of {bad.numel()} rows (first: {rows[:5]}); pass nonfinite='drop' "
                                 "to drop them and count")

    def _weights(self, x: torch.Tensor, t: float) -> torch.Tensor:
        B, K = x.shape[0], len(self.pool)
        logits, r_ent, n_bad = None, float("nan"), 0
        if self.router is not None and self.routing.needs_router(t, True):
            t_net = network_time(torch.full((B,), t, dtype=torch.float64), self.router_time_input)
            with torch.no_grad():
                logits = self.router(x, t_net.to(device=x.device, dtype=x.dtype))  # [B, K]
            bad = bad_rows(logits).cpu()
            if bool(bad.any()):
                self._nonfinite("router", "logits", bad, t)
                logits = torch.where(bad.to(logits.device)[:, None], torch.zeros_like(logits), logits)
            n_bad = int(bad.sum())
            self.counts.router_calls += 1
            self.counts.router_rows += B
            r_ent = float(entropy(torch.softmax(logits.detach().double().cpu(), -1)).mean())
        w = routing_weights(self.routing, logits, t, B, K)  # [B, K] float64 on CPU
        self.router_entropy.append(r_ent)
        self.router_nonfinite.append(n_bad)
        return w

    def _expert_velocity(self, k: int, x_k: torch.Tensor, t: float, c_k: Any, idx: torch.Tensor, batch: int):
        network = self.pool.network(k)
        stats = SafeguardStats()

        def convert(xx: torch.Tensor, tt: torch.Tensor, cc: Any) -> torch.Tensor:
            nonlocal stats
            v, stats = velocity_at_shared_t(network, xx, t, cc, declaration=self.pool.members[k].declaration,
                                            sampler=self.sampler, guard=self.guards[k])
            self.counts.expert_calls[k] += 1
            self.counts.expert_rows[k] += xx.shape[0]
            return v

        fn = convert
        if c_k is not None and self.cfg_scale != 1.0:  # conditional and unconditional rows in one call
            fn = classifier_free_guidance(convert, self.cfg_scale, _null_rows(self.null_cond, idx, batch, network, c_k))
        with torch.no_grad():
            v = fn(x_k, torch.full((x_k.shape[0],), t, dtype=torch.float64), c_k)
        return v, stats

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        t = float(torch.as_tensor(t).reshape(-1)[0])  # the integrator holds one t per call
        B, K = x.shape[0], len(self.pool)
        self._step = len(self.times)  # index of this call in the run
        w = self._weights(x, t)
        self.times.append(t)
        self.usage.append(w.mean(0))
        self.weight_entropy.append(float(entropy(w).mean()))
        stats_tab = torch.zeros(K, len(STAT_KEYS), dtype=torch.long)
        dropped = torch.zeros(K, dtype=torch.long)
        lost = torch.zeros(B, dtype=torch.float64)  # weight of dropped experts per row
        v_mix = torch.zeros_like(x)
        used = []
        for k in range(K):
            idx = torch.nonzero(w[:, k] > 0).flatten()
            if idx.numel() == 0:
                continue  # sparse dispatch: expert k runs on no sample this step
            used.append(k)
            idx_dev = idx.to(x.device)
            v_k, st = self._expert_velocity(k, x[idx_dev], t, index_condition(cond, idx), idx, B)
            stats_tab[k] = _stats_row(st)
            w_k = w[idx, k]
            bad = bad_rows(v_k).cpu()
            if bool(bad.any()):
                self._nonfinite(f"expert {self.pool.members[k].name!r}", "converted velocity", bad, t)
                dropped[k] = int(bad.sum())
                lost[idx[bad]] += w_k[bad]
                w_k = torch.where(bad, 0.0, w_k)
                v_k = torch.where(bad.to(v_k.device).reshape(-1, *([1] * (x.ndim - 1))), torch.zeros_like(v_k), v_k)
            wk = w_k.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
            v_mix.index_add_(0, idx_dev, wk * v_k.to(x.dtype))
        for k in used:
            self.pool.release(k)
        self.safeguards.append(stats_tab)
        self.dropped.append(dropped)
        if bool((lost > 0).any()):  # renormalise the rows that lost an expert over the experts left
            rows = torch.nonzero(lost > 0).flatten()
            kept = w[rows].sum(1) - lost[rows]
            if bool((kept <= 1e-12).any()):
                empty = rows[kept <= 1e-12].tolist()
                raise NonFiniteError(f"no expert with a finite velocity left at step {self._step} (t={t:.6g}) "
                                     f"for {len(empty)} rows (first: {empty[:5]})")
            scale = (w[rows].sum(1) / kept).to(device=x.device, dtype=x.dtype)
            r = rows.to(x.device)
            v_mix[r] = v_mix[r] * scale.reshape(-1, *([1] * (x.ndim - 1)))
        return v_mix
