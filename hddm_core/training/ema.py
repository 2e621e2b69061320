"""Exponential moving average of weights (DiT/PixArt keep one for sampling; decay 0.9999).

shadow <- decay * shadow + (1 - decay) * param, in fp32, after every optimiser step. Buffers are
copied, not averaged. The shadow is what an expert ships for inference.
"""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = {n: params[n].detach().float().clone() for n in self.names}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        shadow = [self.shadow[n] for n in self.names]
        current = [params[n].detach().float() for n in self.names]
        torch._foreach_lerp_(shadow, current, 1.0 - self.decay)  # s + (1 - d)(p - s)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.names) - set(state))
        extra = sorted(set(state) - set(self.names))
        if missing or extra:
            raise ValueError(f"EMA state mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
        for n in self.names:
            if state[n].shape != self.shadow[n].shape:
                raise ValueError(f"EMA tensor {n!r}: shape {tuple(state[n].shape)} != {tuple(self.shadow[n].shape)}")
            self.shadow[n].copy_(state[n])

    def averaged_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's full state dict with EMA weights in place of parameters (buffers as-is)."""
        out = {}
        for k, v in model.state_dict().items():
            out[k] = self.shadow[k].to(v.dtype).clone() if k in self.shadow else v.detach().clone()
        return out
