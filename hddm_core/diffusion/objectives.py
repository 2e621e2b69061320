"""Training objectives as small callables that own their time sampling and weighting.

An objective = prediction type (target) + schedule (how x_t is formed) + time sampling + the
network's time input + a per-sample weighting. The backbone never sees which one it is.

Presets (names are the single dispatch point, used by configs, manifests and the CLI):
  ddpm-eps       eps-prediction on DDPM linear betas, t = i/999 with i ~ U{0..999},
                 network reads round(999 t)                      (Ho et al. 2020, "L_simple")
  flow-matching  velocity on the linear path, t ~ U(0, 1), network reads 1000 t
                                                                  (Lipman et al. 2023; Liu et al.)
  x0             x0-prediction on the linear path, t ~ U(0, 1), network reads 1000 t
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from hddm_core.diffusion.conversion import ExpertDeclaration
from hddm_core.diffusion.predictions import EPS, VELOCITY, X0, Prediction, _bcast, get_prediction
from hddm_core.diffusion.schedules import NUM_TRAIN_STEPS, Schedule, get_schedule
from hddm_core.diffusion.time_inputs import network_time

TIME_SAMPLINGS = ("uniform", "uniform-discrete", "logit-normal")


def sample_time(kind: str, batch: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
    """Training times t in [0, 1] (float64, on CPU for the schedule maths)."""
    if kind == "uniform":
        return torch.rand(batch, generator=generator, dtype=torch.float64)
    if kind == "uniform-discrete":
        index = torch.randint(0, NUM_TRAIN_STEPS, (batch,), generator=generator)
        return index.double() / (NUM_TRAIN_STEPS - 1)
    if kind == "logit-normal":  # SD3's logit-normal(0, 1) emphasis on mid times
        return torch.sigmoid(torch.randn(batch, generator=generator, dtype=torch.float64))
    raise ValueError(f"unknown time sampling {kind!r}; valid: {list(TIME_SAMPLINGS)}")


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, weighted mean
    per_sample: torch.Tensor  # [B] unweighted MSE per sample
    t: torch.Tensor  # [B] float64


@dataclass(frozen=True)
class Objective:
    name: str
    prediction: str
    schedule: str
    time_input: str
    time_sampling: str
    weighting: Callable[[Any], torch.Tensor] | None = None  # coeffs -> [B] weights; None = 1

    def __post_init__(self):
        ExpertDeclaration(self.prediction, self.schedule, self.time_input)  # validates the three
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time sampling {self.time_sampling!r}; valid: {list(TIME_SAMPLINGS)}")

    @property
    def declaration(self) -> ExpertDeclaration:
        return ExpertDeclaration(self.prediction, self.schedule, self.time_input)

    def __call__(self, model: Callable, x0: torch.Tensor, cond: Any = None, *,
                 generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                 t: torch.Tensor | None = None) -> LossOutput:
        schedule: Schedule = get_schedule(self.schedule)
        prediction: Prediction = get_prediction(self.prediction)
        if t is None:
            t = sample_time(self.time_sampling, x0.shape[0], generator)
        t = torch.as_tensor(t, dtype=torch.float64).cpu()
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device="cpu").to(x0.device)
        c = schedule.coefficients(t)
        x_t = _bcast(c.alpha, x0) * x0 + _bcast(c.sigma, x0) * noise
        target = prediction.target(x0, noise, c)
        net_t = network_time(t, self.time_input).to(device=x0.device, dtype=x0.dtype)
        out = model(x_t, net_t, cond)
        per_sample = (out.float() - target.float()).pow(2).flatten(1).mean(1)
        weights = torch.ones_like(per_sample) if self.weighting is None else \
            self.weighting(c).to(per_sample.device, per_sample.dtype)
        return LossOutput(loss=(weights * per_sample).mean(), per_sample=per_sample.detach(), t=t)


# The objectives: the one place their names are written (pipeline params, CLI choices, training
# configs and manifests derive from this table).
DDPM_EPS, FLOW_MATCHING, X0_OBJECTIVE = "ddpm-eps", "flow-matching", "x0"
OBJECTIVES = {
    DDPM_EPS: dict(prediction=EPS, schedule="ddpm-linear", time_input="discrete-999", time_sampling="uniform-discrete"),
    FLOW_MATCHING: dict(prediction=VELOCITY, schedule="linear", time_input="scaled-1000", time_sampling="uniform"),
    X0_OBJECTIVE: dict(prediction=X0, schedule="linear", time_input="scaled-1000", time_sampling="uniform"),
}
OBJECTIVE_NAMES = tuple(OBJECTIVES)


def get_objective(name: str, **overrides) -> Objective:
    """Preset by name; overrides (schedule, time_input, time_sampling, ...) are validated."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid: {sorted(OBJECTIVES)}")
    return Objective(name=name, **{**OBJECTIVES[name], **overrides})


def x0_error_weight(prediction: str, schedule: str, t: torch.Tensor) -> torch.Tensor:
    """Effective weight of an objective's MSE written in clean-sample error ||x0_hat - x0||^2.

    On the linear path: eps -> ((1-t)/t)^2, velocity -> 1/t^2, so eps/velocity = alpha_t^2;
    equivalently, written in eps error, the velocity loss is the eps loss times 1/alpha_t^2
    (velocity emphasises high noise, eps low noise: the paper's complementarity argument).
    """
    c = get_schedule(schedule).coefficients(torch.as_tensor(t, dtype=torch.float64))
    return get_prediction(prediction).x0_error_weight(c)
