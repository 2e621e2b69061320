"""Detect a bad step before it is applied: a non-finite loss or gradient norm, or a loss spike.

A spike is a loss above `factor` x the median of the last `window` accepted losses (the median
ignores the occasional large but honest batch that a mean would chase). The window is part of
the checkpointed state, so a resumed run makes exactly the same decisions as an uninterrupted one.
"""
from __future__ import annotations

import math
from collections import deque

import torch


class BadStep(Exception):
    """A step that must not be applied; carries why."""

    def __init__(self, reason: str, value: float):
        super().__init__(f"{reason} ({value})")
        self.reason, self.value = reason, value


class LossGuard:
    def __init__(self, factor: float, window: int):
        self.factor, self.window = float(factor), int(window)
        self.history: deque[float] = deque(maxlen=self.window)

    def check_loss(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise BadStep("non-finite loss", loss)
        if self.factor > 0 and len(self.history) == self.window:
            median = sorted(self.history)[self.window // 2]
            if loss > self.factor * median:
                raise BadStep(f"loss spike > {self.factor} x median {median:.4g}", loss)

    @staticmethod
    def check_grad_norm(norm: float) -> None:
        if not math.isfinite(norm):
            raise BadStep("non-finite gradient norm", norm)

    def accept(self, loss: float) -> None:
        self.history.append(float(loss))

    def state(self) -> dict:
        return {"history": list(self.history)}

    def load(self, state: dict) -> None:
        self.history = deque((float(v) for v in state.get("history", [])), maxlen=self.window)


def all_finite(tensors) -> bool:
    """True when every floating tensor in the iterable is finite (nothing non-finite is saved)."""
    for t in tensors:
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return False
    return True
