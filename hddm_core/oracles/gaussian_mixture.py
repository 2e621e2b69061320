"""A mixture of Gaussian clusters with exact experts, exact router and exact monolith.

Cluster k is x0 ~ N(m_k 1, s_k^2 I) in `dim` dimensions with weight pi_k. On a schedule
x_t = alpha x0 + sigma eps, x_t | k ~ N(alpha m_k 1, (alpha^2 s_k^2 + sigma^2) I), so
    log p(k | x_t) = log pi_k - dim/2 log v_k - ||x_t - alpha m_k 1||^2 / (2 v_k) + const,
    v_k = alpha^2 s_k^2 + sigma^2.
The mixture's optimal predictor of any type is the posterior-weighted sum of the clusters' optimal
predictors (each is an expectation, and E[. | x_t] = sum_k p(k | x_t) E[. | x_t, k]). Hence the
full ensemble of ideal cluster experts driven by the exact posterior router IS the mixture's
probability-flow field: sampling it must reproduce the mixture up to Euler error.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hddm_core.diffusion.conversion import ExpertDeclaration
from hddm_core.oracles.gaussian import GaussianData
from hddm_core.diffusion.predictions import _bcast
from hddm_core.diffusion.schedules import LinearPath, Schedule, get_schedule
from hddm_core.diffusion.time_inputs import continuous_time


@dataclass(frozen=True)
class GaussianMixture:
    means: tuple[float, ...]
    stds: tuple[float, ...]
    weights: tuple[float, ...]
    dim: int = 2

    def __post_init__(self):
        if not (len(self.means) == len(self.stds) == len(self.weights) >= 1):
            raise ValueError(f"means, stds and weights need one equal non-zero length, got "
                             f"{len(self.means)}, {len(self.stds)}, {len(self.weights)}")
        if any(s <= 0 for s in self.stds) or any(w <= 0 for w in self.weights):
            raise ValueError(f"stds and weights must be positive, got {self.stds}, {self.weights}")
        if not (isinstance(self.dim, int) and self.dim >= 1):
            raise ValueError(f"dim must be a positive integer, got {self.dim!r}")

    @property
    def k(self) -> int:
        return len(self.means)

    def component(self, k: int) -> GaussianData:
        return GaussianData(self.means[k], self.stds[k])

    def pi(self) -> torch.Tensor:
        w = torch.tensor(self.weights, dtype=torch.float64)
        return w / w.sum()

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 [n, dim] float64, labels [n])."""
        labels = torch.multinomial(self.pi(), n, replacement=True, generator=generator)
        m = torch.tensor(self.means, dtype=torch.float64)[labels][:, None]
        s = torch.tensor(self.stds, dtype=torch.float64)[labels][:, None]
        return m + s * torch.randn(n, self.dim, generator=generator, dtype=torch.float64), labels

    def log_posterior(self, x: torch.Tensor, t: torch.Tensor, schedule: Schedule | None = None) -> torch.Tensor:
        """log p(k | x_t) [B, K] (normalised) on `schedule` (the sampler's linear path by default)."""
        schedule = schedule or LinearPath()
        x = x.double().flatten(1)
        c = schedule.coefficients(torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0]))
        m = torch.tensor(self.means, dtype=torch.float64)  # [K]
        s = torch.tensor(self.stds, dtype=torch.float64)
        var = c.alpha[:, None] ** 2 * s[None] ** 2 + c.sigma[:, None] ** 2  # [B, K]
        sq = ((x[:, None, :] - c.alpha[:, None, None] * m[None, :, None]) ** 2).sum(-1)  # [B, K]
        logp = torch.log(self.pi())[None] - 0.5 * x.shape[1] * torch.log(var) - 0.5 * sq / var
        return torch.log_softmax(logp, dim=-1)

    def posterior_router(self, time_input: str = "continuous", schedule: Schedule | None = None):
        """router(x, t_net) -> exact log p(k | x_t, t) [B, K]: the ideal router."""

        def router(x: torch.Tensor, t_net: torch.Tensor) -> torch.Tensor:
            t = continuous_time(t_net.double().cpu(), time_input).clamp(0.0, 1.0)
            return self.log_posterior(x, t, schedule).to(x.dtype)

        return router

    def expert_network(self, k: int, declaration: ExpertDeclaration):
        """The ideal expert trained on cluster k only (exact optimal prediction of its declared type)."""
        return self.component(k).ideal_network(declaration)

    def ideal_network(self, declaration: ExpertDeclaration):
        """The ideal monolith trained on the whole mixture (posterior-weighted cluster predictors)."""
        schedule = get_schedule(declaration.schedule)

        def network(x: torch.Tensor, net_t: torch.Tensor, cond=None) -> torch.Tensor:
            t = continuous_time(net_t.double().cpu(), declaration.time_input).clamp(0.0, 1.0)
            c = schedule.coefficients(t)
            post = torch.exp(self.log_posterior(x, t, schedule))  # [B, K]
            out = torch.zeros_like(x, dtype=torch.float64)
            for k in range(self.k):
                out += _bcast(post[:, k], out) * self.component(k).optimal(declaration.prediction, x.double(), c)
            return out.to(x.dtype)

        return network

    def assign(self, x0: torch.Tensor) -> torch.Tensor:
        """Most likely cluster of clean samples [n, dim] -> [n] (posterior at t = 0)."""
        return self.log_posterior(x0, torch.zeros(x0.shape[0], dtype=torch.float64)).argmax(-1)

    def component_mass(self, x0: torch.Tensor) -> torch.Tensor:
        """Fraction of samples assigned to each cluster [K]."""
        return torch.bincount(self.assign(x0), minlength=self.k).double() / x0.shape[0]

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean [dim] and covariance [dim, dim] of the mixture."""
        pi, m, s = self.pi(), torch.tensor(self.means, dtype=torch.float64), torch.tensor(self.stds, dtype=torch.float64)
        mean = (pi * m).sum()
        second = (pi * m**2).sum()
        var_within = (pi * s**2).sum()
        cov = torch.full((self.dim, self.dim), float(second - mean**2), dtype=torch.float64)
        cov += torch.eye(self.dim, dtype=torch.float64) * var_within
        return torch.full((self.dim,), float(mean), dtype=torch.float64), cov
