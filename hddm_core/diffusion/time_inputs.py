"""How a network reads time: part of every expert's declaration (conversion.ExpertDeclaration; docs/architecture.md).

The sampler and the conversion module always work in continuous t in [0, 1]; this module turns
that t (on the expert's own schedule) into the number the network was trained to see.
"""
from __future__ import annotations

import torch

from hddm_core.diffusion.schedules import NUM_TRAIN_STEPS


def _discrete_999(t: torch.Tensor) -> torch.Tensor:
    # DDPM index round(999 t): converted ImageNet-DiT checkpoints were trained on these integers.
    return torch.round(t * (NUM_TRAIN_STEPS - 1)).clamp(0, NUM_TRAIN_STEPS - 1)


def _scaled_1000(t: torch.Tensor) -> torch.Tensor:
    return t * 1000.0


def _continuous(t: torch.Tensor) -> torch.Tensor:
    return t


_ENCODERS = {"discrete-999": _discrete_999, "scaled-1000": _scaled_1000, "continuous": _continuous}
_DECODERS = {
    "discrete-999": lambda v: v / (NUM_TRAIN_STEPS - 1),
    "scaled-1000": lambda v: v / 1000.0,
    "continuous": lambda v: v,
}
TIME_INPUTS = tuple(sorted(_ENCODERS))


def check_time_input(name: str) -> str:
    if name not in _ENCODERS:
        raise ValueError(f"unknown time input {name!r}; valid: {list(TIME_INPUTS)}")
    return name


def network_time(t: torch.Tensor, time_input: str) -> torch.Tensor:
    """Continuous t on the expert's schedule -> the value fed to its network."""
    return _ENCODERS[check_time_input(time_input)](torch.as_tensor(t))


def continuous_time(value: torch.Tensor, time_input: str) -> torch.Tensor:
    """Inverse of network_time (up to the rounding of discrete-999)."""
    return _DECODERS[check_time_input(time_input)](torch.as_tensor(value))
