"""Routing modes: router logits (or none) at time t -> dense per-sample expert weights [B, K].

A zero weight means the sample does not run that expert (the sampler dispatches sparsely from
the non-zero pattern). Modes (HDDM paper, sec. 3 and its threshold-router ablation):
- top-k:     keep the k most probable experts, renormalise their router probabilities (k = 1 is
             Top-1; k = K equals the full ensemble exactly).
- full:      every expert, weighted by its router probability p(k | x_t, t).
- threshold: deterministic, no learned router needed: experts `high` for t > tau, experts `low`
             for t <= tau (FM-first = FM experts in `high`; DDPM-first = DDPM experts in `high`).
             A grid time within TAU_TOLERANCE of tau counts as t = tau (low): float grids hold
             0.30000000000000004 for 0.3, and a strict `t > tau` made tau = 0.2 and 0.3 identical.
             A group of several experts is split by the router restricted to the group (`within`:
             top-1 or full), or uniformly when no router is given.
- fixed:     manual weights, the same for every sample and time (normalised to sum 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from hddm_core.diffusion.predictions import is_velocity

# Routing names: this module is the one place they are written. MODES are Routing's own modes;
# ROUTING_NAMES (the table at the end) are the named modes users pick, mapped onto them.
TOP_K, FULL, THRESHOLD, FIXED = "top-k", "full", "threshold", "fixed"
TOP_1, TOP_2, SINGLE, AUTO = "top-1", "top-2", "single", "auto"
MODES = (TOP_K, FULL, THRESHOLD, FIXED)
WITHIN = (TOP_1, FULL)
TAU_TOLERANCE = 1e-9  # far below any grid spacing (1e-3 at 1000 steps), far above float64 grid rounding


@dataclass(frozen=True)
class Routing:
    mode: str
    k: int = 1
    tau: float = 0.5
    low: tuple[int, ...] = ()
    high: tuple[int, ...] = ()
    within: str = "top-1"
    weights: tuple[float, ...] = ()

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown routing mode {self.mode!r}; valid: {list(MODES)}")
        if self.mode == "top-k" and not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"top-k routing needs an integer k >= 1, got {self.k!r}")
        if self.mode == "threshold":
            if not 0.0 <= self.tau <= 1.0:
                raise ValueError(f"threshold tau must be in [0, 1], got {self.tau!r}")
            if not self.low or not self.high:
                raise ValueError(f"threshold routing needs non-empty expert groups, got low={self.low}, high={self.high}")
            if self.within not in WITHIN:
                raise ValueError(f"unknown within-group routing {self.within!r}; valid: {list(WITHIN)}")
        if self.mode == "fixed":
            w = self.weights
            if not w or any(not (float(x) >= 0.0) for x in w) or sum(w) <= 0:
                raise ValueError(f"fixed routing needs non-negative weights with a positive sum, got {w!r}")

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def top1(cls) -> "Routing":
        return cls("top-k", k=1)

    @classmethod
    def top_k(cls, k: int) -> "Routing":
        return cls("top-k", k=k)

    @classmethod
    def full(cls) -> "Routing":
        return cls("full")

    @classmethod
    def threshold(cls, tau: float, low, high, within: str = "top-1") -> "Routing":
        as_tuple = lambda g: (int(g),) if isinstance(g, int) else tuple(int(i) for i in g)  # noqa: E731
        return cls("threshold", tau=float(tau), low=as_tuple(low), high=as_tuple(high), within=within)

    @classmethod
    def fixed(cls, weights) -> "Routing":
        return cls("fixed", weights=tuple(float(w) for w in weights))

    @classmethod
    def from_name(cls, name: str, *, predictions: Sequence[str], has_router: bool, tau: float = 0.5) -> "Routing":
        """The Routing a named mode (ROUTING_NAMES, or 'auto') means for experts with these prediction kinds;
        raises RoutingUnavailable ('<name>: <why>') when it does not apply to them."""
        spec = named_routing(resolve_name(name, has_router=has_router, predictions=predictions))
        ddpm, fm = kind_groups(predictions)
        if spec.needs_router and not has_router:
            raise RoutingUnavailable(f"{spec.name}: needs a router")
        if len(predictions) < spec.min_experts:
            raise RoutingUnavailable(f"{spec.name}: needs {'two' if spec.min_experts == 2 else spec.min_experts} experts")
        if spec.needs_both_kinds and not (ddpm and fm):
            raise RoutingUnavailable(f"{spec.name}: needs both DDPM and FM experts")
        return spec.build(tau, ddpm, fm, len(predictions))

    @property
    def label(self) -> str:
        if self.mode == "top-k":
            return f"top-{self.k}"
        if self.mode == "threshold":
            return f"threshold(tau={self.tau:g}, high={list(self.high)}, low={list(self.low)})"
        if self.mode == "fixed":
            return f"fixed({', '.join(f'{w:g}' for w in self.weights)})"
        return "full"

    def to_dict(self) -> dict:
        return {"mode": self.mode, "k": self.k, "tau": self.tau, "low": list(self.low), "high": list(self.high),
                "within": self.within, "weights": list(self.weights), "label": self.label}

    # -- validation against an ensemble ----------------------------------------------------------
    def check(self, num_experts: int, has_router: bool) -> None:
        if self.mode in ("top-k", "full") and not has_router:
            raise ValueError(f"routing mode {self.label!r} needs a router; use threshold or fixed routing without one")
        if self.mode == "top-k" and self.k > num_experts:
            raise ValueError(f"top-k routing with k={self.k} but the ensemble has only {num_experts} experts")
        if self.mode == "threshold":
            bad = [i for i in self.low + self.high if not 0 <= i < num_experts]
            if bad:
                raise ValueError(f"threshold routing names experts {bad}; valid indices are 0..{num_experts - 1}")
        if self.mode == "fixed" and len(self.weights) != num_experts:
            raise ValueError(f"fixed routing has {len(self.weights)} weights for {num_experts} experts")

    def is_high(self, t: float) -> bool:
        """Threshold routing: whether time t uses the `high` group (t > tau beyond TAU_TOLERANCE)."""
        return t > self.tau + TAU_TOLERANCE

    def needs_router(self, t: float, has_router: bool) -> bool:
        """Whether a router call is needed at time t (threshold groups of one need none)."""
        if self.mode in ("top-k", "full"):
            return True
        if self.mode == "threshold":
            group = self.high if self.is_high(t) else self.low
            return has_router and len(group) > 1
        return False


def _top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    if k >= probs.shape[-1]:
        return probs  # every expert kept: the full ensemble, bit for bit
    values, index = probs.topk(k, dim=-1)
    weights = torch.zeros_like(probs).scatter(-1, index, values)
    return weights / weights.sum(-1, keepdim=True).clamp_min(1e-300)


def _group_weights(group: tuple[int, ...], probs: torch.Tensor | None, within: str, batch: int, k_total: int):
    w = torch.zeros(batch, k_total, dtype=torch.float64)
    idx = torch.tensor(group)
    if len(group) == 1:
        w[:, group[0]] = 1.0
        return w
    if probs is None:
        w[:, idx] = 1.0 / len(group)
        return w
    restricted = torch.zeros_like(w)
    restricted[:, idx] = probs[:, idx]
    restricted = restricted / restricted.sum(-1, keepdim=True).clamp_min(1e-300)
    return _top_k(restricted, 1) if within == "top-1" else restricted


def routing_weights(routing: Routing, logits: torch.Tensor | None, t: float, batch: int, num_experts: int) -> torch.Tensor:
    """Weights [B, K] (float64, rows sum to 1) for every sample at sampler time t."""
    probs = None if logits is None else torch.softmax(logits.detach().double().cpu(), dim=-1)
    if probs is not None and probs.shape != (batch, num_experts):
        raise ValueError(f"router returned logits of shape {tuple(logits.shape)}, expected ({batch}, {num_experts})")
    if routing.mode == "full":
        return probs
    if routing.mode == "top-k":
        return _top_k(probs, routing.k)
    if routing.mode == "fixed":
        w = torch.tensor(routing.weights, dtype=torch.float64)
        return (w / w.sum()).expand(batch, num_experts).clone()
    group = routing.high if routing.is_high(t) else routing.low
    return _group_weights(group, probs, routing.within, batch, num_experts)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of each row of probs [B, K] -> [B]."""
    p = probs.double()
    return -(p * torch.log(p.clamp_min(1e-300))).sum(-1)


# -- named routing modes ---------------------------------------------------------------------------------
class RoutingUnavailable(ValueError):
    """A named routing mode that does not apply to this ensemble; the message is '<name>: <why>'."""


def kind_groups(predictions: Sequence[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(DDPM experts, FM experts): indices of the non-velocity and the velocity predictors."""
    fm = tuple(i for i, p in enumerate(predictions) if is_velocity(p))
    return tuple(i for i in range(len(predictions)) if i not in fm), fm


@dataclass(frozen=True)
class NamedRouting:
    """A routing mode users pick by name (CLI, pipeline params, Prefect form) and the report label it shows."""

    name: str
    build: Callable[[float, tuple, tuple, int], "Routing"]  # (tau, ddpm, fm, num_experts) -> Routing
    label: Callable[[float, int], str]  # (tau, num_experts) -> display label of the variant
    needs_router: bool = False
    min_experts: int = 1
    needs_both_kinds: bool = False  # DDPM and FM experts (threshold)


_NAMED = (
    NamedRouting(TOP_1, lambda tau, ddpm, fm, n: Routing.top1(), lambda tau, n: TOP_1, needs_router=True),
    NamedRouting(TOP_2, lambda tau, ddpm, fm, n: Routing.top_k(2), lambda tau, n: TOP_2, needs_router=True,
                 min_experts=2),
    NamedRouting(FULL, lambda tau, ddpm, fm, n: Routing.full(), lambda tau, n: FULL, needs_router=True),
    # FM-first: FM experts at high noise, DDPM ones at t <= tau (paper, sec. 4)
    NamedRouting(THRESHOLD, lambda tau, ddpm, fm, n: Routing.threshold(tau, low=ddpm, high=fm),
                 lambda tau, n: f"{THRESHOLD} FM-first tau={tau:g}", needs_both_kinds=True),
    NamedRouting(SINGLE, lambda tau, ddpm, fm, n: Routing.fixed([1.0] * n),
                 lambda tau, n: "uniform mix" if n > 1 else "single expert"),
)
NAMED_ROUTINGS = {r.name: r for r in _NAMED}
ROUTING_NAMES = tuple(NAMED_ROUTINGS)
CHOICES_WITH_AUTO = (AUTO, *ROUTING_NAMES)


def named_routing(name: str) -> NamedRouting:
    try:
        return NAMED_ROUTINGS[name]
    except KeyError:
        raise ValueError(f"unknown routing mode {name!r}; valid: {list(ROUTING_NAMES)}") from None


def resolve_name(name: str, *, has_router: bool, predictions: Sequence[str]) -> str:
    """'auto' -> top-2 with a router (and two experts), else threshold when DDPM and FM experts are both
    present, else single; any other name is returned as it is (once checked)."""
    if name != AUTO:
        return named_routing(name).name
    if has_router and len(predictions) > 1:
        return TOP_2
    ddpm, fm = kind_groups(predictions)
    return THRESHOLD if ddpm and fm else SINGLE


def routing_label(name: str, *, tau: float, num_experts: int) -> str:
    """The label a report shows for a named mode (e.g. 'threshold FM-first tau=0.3', 'uniform mix')."""
    return named_routing(name).label(tau, num_experts)
