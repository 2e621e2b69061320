"""Ensemble expert handles and memory-aware placement: an expert goes to the device when first selected.

With offload=True an expert goes back to the CPU after each step it served, so only the experts
of the current step occupy accelerator memory (slower: one host<->device copy per use).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from hddm_core.diffusion.conversion import ExpertDeclaration, Network

log = logging.getLogger(__name__)
COMPAT_FIELDS = ("latent_space", "text_encoder")


@dataclass
class EnsembleExpertHandle:
    """One expert as the ensemble holds it: name, declaration, and a network or a lazy loader for one.

    Not the checkpoint (hddm_core.checkpoints) and not a velocity field
    (hddm_core.diffusion.conversion.ExpertVelocityField): the ensemble sampler converts the handle's
    network to velocity itself, with the ensemble's sampler path and safeguards.

    latent_space / text_encoder identify what the expert reads and writes (e.g. "sd-vae-ft-ema@0.18215",
    "all-MiniLM-L6-v2/384"); experts that disagree cannot be mixed. data_mean, when given, replaces
    the ensemble's Safeguards.data_mean for this expert (docs/safeguards.md: the t = 1 end).
    """

    name: str
    declaration: ExpertDeclaration
    network: Network | None = None
    loader: Callable[[], Network] | None = None
    latent_space: str | None = None
    text_encoder: str | None = None
    manifest: dict = field(default_factory=dict)
    data_mean: float | None = None  # mean of this expert's training data: its eps inverse at pure noise

    def __post_init__(self):
        if self.network is None and self.loader is None:
            raise ValueError(f"expert {self.name!r} needs a network or a loader")


def check_compatible(members: Sequence[EnsembleExpertHandle]) -> None:
    """Refuse ensembles whose experts live in different latent spaces or read different text encoders."""
    if not members:
        raise ValueError("an ensemble needs at least one expert")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ValueError(f"expert names must be unique, got {names}")
    for name in COMPAT_FIELDS:
        values = {m.name: getattr(m, name) for m in members}
        declared = {v for v in values.values() if v is not None}
        if len(declared) > 1:
            raise ValueError(f"incompatible experts: field {name!r} differs across the ensemble: {values}; "
                             f"every expert must share one {name}")
        if declared and None in values.values():
            missing = [k for k, v in values.items() if v is None]
            raise ValueError(f"incompatible experts: field {name!r} is {declared.pop()!r} for some experts but "
                             f"undeclared for {missing}")


class ExpertPool:
    """Holds members, builds lazy ones, moves networks to the device on first use (optional offload)."""

    def __init__(self, members: Sequence[EnsembleExpertHandle], device: str | torch.device = "cpu", offload: bool = False):
        check_compatible(members)
        self.members = list(members)
        self.device = torch.device(device)
        self.offload = offload
        self.events: list[tuple[str, str]] = []  # (expert, "load" | "to-device" | "offload")
        self._on_device: set[int] = set()

    def __len__(self) -> int:
        return len(self.members)

    def network(self, k: int) -> Network:
        m = self.members[k]
        if m.network is None:
            m.network = m.loader()
            self.events.append((m.name, "load"))
        net = m.network
        if isinstance(net, torch.nn.Module) and k not in self._on_device:
            p = next(iter(net.parameters()), None)
            if p is not None and p.device != self.device:
                net.to(self.device)
                self.events.append((m.name, "to-device"))
            self._on_device.add(k)
        return net

    def release(self, k: int) -> None:
        net = self.members[k].network
        if self.offload and isinstance(net, torch.nn.Module) and self.device.type != "cpu":
            net.to("cpu")
            self._on_device.discard(k)
            self.events.append((self.members[k].name, "offload"))

    def resident(self) -> list[str]:
        """Names of experts the pool has placed on the sampling device (and not offloaded since)."""
        return [self.members[k].name for k in sorted(self._on_device)]


def index_condition(cond: Any, idx: torch.Tensor) -> Any:
    """Rows idx of a conditioning: a tensor, a dict of tensors, or None."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond[idx.to(cond.device)]
    if isinstance(cond, dict):
        return {k: index_condition(v, idx) for k, v in cond.items()}
    raise TypeError(f"cannot index conditioning of type {type(cond).__name__}; use a tensor, dict or None")


def condition_batch(cond: Any) -> int | None:
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond.shape[0]
    if isinstance(cond, dict):
        sizes = {condition_batch(v) for v in cond.values()}
        if len(sizes) != 1:
            raise ValueError(f"conditioning dict entries disagree on batch size: {sorted(map(str, sizes))}")
        return sizes.pop()
    raise TypeError(f"unsupported conditioning type {type(cond).__name__}; use a tensor, dict or None")
