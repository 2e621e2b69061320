"""Gaussian data x0 ~ N(mu, s^2 I): exact optimal predictors for tests, benchmarks and the demo.

With x_t = alpha x0 + sigma eps, x_t ~ N(alpha mu, alpha^2 s^2 + sigma^2) per coordinate and
    E[x0 | x_t]  = mu + alpha s^2 (x_t - alpha mu) / (alpha^2 s^2 + sigma^2)
    E[eps | x_t] = sigma (x_t - alpha mu) / (alpha^2 s^2 + sigma^2)
    v*(x_t)      = alpha' E[x0 | x_t] + sigma' E[eps | x_t]
These are the minimisers of the x0, eps and velocity MSE objectives, so an "ideal expert" of any
prediction type and schedule is known exactly, and the probability-flow ODE driven by v* maps
N(0, I) at t = 1 to N(mu, s^2) at t = 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hddm_core.diffusion.conversion import ExpertDeclaration
from hddm_core.diffusion.predictions import _bcast, get_prediction
from hddm_core.diffusion.schedules import PathCoefficients, get_schedule
from hddm_core.diffusion.time_inputs import continuous_time


@dataclass(frozen=True)
class GaussianData:
    mean: float
    std: float

    def sample(self, n: int, shape=(4,), generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean + self.std * torch.randn((n, *shape), generator=generator, dtype=torch.float64)

    def _gain(self, c: PathCoefficients, x: torch.Tensor):
        var = _bcast(c.alpha**2 * self.std**2 + c.sigma**2, x)
        return (x - _bcast(c.alpha, x) * self.mean) / var

    def optimal_x0(self, x: torch.Tensor, c: PathCoefficients) -> torch.Tensor:
        return self.mean + _bcast(c.alpha, x) * self.std**2 * self._gain(c, x)

    def optimal_eps(self, x: torch.Tensor, c: PathCoefficients) -> torch.Tensor:
        return _bcast(c.sigma, x) * self._gain(c, x)

    def optimal_velocity(self, x: torch.Tensor, c: PathCoefficients) -> torch.Tensor:
        return _bcast(c.d_alpha, x) * self.optimal_x0(x, c) + _bcast(c.d_sigma, x) * self.optimal_eps(x, c)

    def optimal(self, prediction: str, x: torch.Tensor, c: PathCoefficients) -> torch.Tensor:
        # Every target is linear in (x0, eps), so its MSE minimiser is the target of the posterior means.
        return get_prediction(prediction).target(self.optimal_x0(x, c), self.optimal_eps(x, c), c)

    def ideal_network(self, declaration: ExpertDeclaration):
        """A 'network' that outputs the exact optimal prediction of the declared type.

        It decodes time from its own input convention, so a discrete-999 expert sees the same
        rounding a real DDPM network sees.
        """
        schedule = get_schedule(declaration.schedule)

        def network(x: torch.Tensor, net_t: torch.Tensor, cond=None) -> torch.Tensor:
            t = continuous_time(net_t.double().cpu(), declaration.time_input).clamp(0.0, 1.0)
            out = self.optimal(declaration.prediction, x.double(), schedule.coefficients(t))
            return out.to(x.dtype)

        return network
