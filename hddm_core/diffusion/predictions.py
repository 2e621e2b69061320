"""Prediction types: each owns its training target and its inverse (prediction -> x0, eps).

This is the one contract between objectives (which need `target`) and the conversion module
(which needs `to_x0_eps`), in the spirit of k-diffusion's denoiser wrappers. All formulas use
x_t = alpha x0 + sigma eps and the path velocity v = alpha' x0 + sigma' eps.

The t = 1 end for eps-predictors (one treatment, docs/safeguards.md): x0_hat = (x_t - sigma eps)/alpha
is divided by the true alpha however small (no alpha_safe = max(alpha, 0.01): that floor shrinks a
correct x0_hat by alpha/0.01 and moved an ideal expert's sample mean 0.21 off a data mean of 3 in
10 Euler steps); below alpha_min the x0 clamp alone bounds it ("clamp-only"). Where alpha <= ALPHA_ZERO
(pure noise: the linear and cosine paths at t = 1) x_t is independent of x0, the eps prediction
holds no information about x0, and the exact limit E[x0 | x_t] = E[x0] = Safeguards.data_mean is used.
"""
from __future__ import annotations

import torch

from hddm_core.diffusion.safeguards import Safeguards, SafeguardStats
from hddm_core.diffusion.schedules import PathCoefficients

# Prediction kinds: the one place their names are written (objectives, manifests, oracles and the
# ensemble's DDPM/FM grouping derive from here).
EPS, VELOCITY, X0, V_PREDICTION = "eps", "velocity", "x0", "v-prediction"
# alpha at or below this is pure noise for the eps inverse: rounding of x_t - sigma eps (~1e-7 |x| in
# float32) divided by alpha would exceed ~10% of |x|, and at alpha = 0 it is 0/0.
ALPHA_ZERO = 1e-6


def _bcast(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] (or scalar) float64 coefficient -> broadcastable against like ([B, ...]) in its dtype."""
    coef = torch.as_tensor(coef, device=like.device).to(like.dtype)
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape + (1,) * (like.ndim - coef.ndim))


def _clamp_x0(x0: torch.Tensor, guard: Safeguards, stats: SafeguardStats) -> torch.Tensor:
    if not guard.enabled:
        return x0
    limit = guard.x0_clamp
    stats.x0_clamped += int((x0.abs() > limit).sum().item()) + int(torch.isnan(x0).sum().item())
    return torch.nan_to_num(x0, nan=0.0).clamp(-limit, limit)


class Prediction:
    name: str = "abstract"
    variance_preserving_only: bool = False  # defined only on VP schedules (alpha^2 + sigma^2 = 1)

    def target(self, x0: torch.Tensor, eps: torch.Tensor, c: PathCoefficients) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def to_x0_eps(self, pred, x_t, c: PathCoefficients, guard: Safeguards, stats: SafeguardStats):
        raise NotImplementedError  # pragma: no cover

    def x0_error_weight(self, c: PathCoefficients) -> torch.Tensor:
        """w such that ||pred_hat - pred||^2 = w ||x0_hat - x0||^2 at fixed x_t."""
        raise NotImplementedError  # pragma: no cover

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsPrediction(Prediction):
    """DDPM epsilon-prediction (Ho et al. 2020)."""

    name = EPS

    def target(self, x0, eps, c):
        return eps

    def to_x0_eps(self, pred, x_t, c, guard, stats):
        alpha = torch.as_tensor(c.alpha, dtype=torch.float64)
        noise_only = alpha <= ALPHA_ZERO
        # x0_hat = (x_t - sigma eps_hat) / alpha; on the linear path (x_t - t eps)/(1 - t) (paper).
        x0 = (x_t - _bcast(c.sigma, x_t) * pred) / _bcast(torch.where(noise_only, 1.0, alpha), x_t)
        if bool(noise_only.any()):  # E[x0 | x_t] = E[x0] at pure noise (module docstring)
            x0 = torch.where(_bcast(noise_only, x0).bool(), torch.full_like(x0, guard.data_mean), x0)
        if guard.enabled:
            low = (alpha < guard.alpha_min) & ~noise_only
            bad = (x0.abs() > guard.x0_clamp) | torch.isnan(x0)
            stats.low_alpha_clamped += int((low.to(x0.device) & bad.flatten(1).any(1)).sum().item())
        return _clamp_x0(x0, guard, stats), pred

    def x0_error_weight(self, c):
        return (c.alpha / c.sigma) ** 2  # eps error = -(alpha/sigma) x0 error


class VelocityPrediction(Prediction):
    """Flow-matching velocity v = alpha' x0 + sigma' eps on the expert's own path (eps - x0 on linear)."""

    name = VELOCITY

    def target(self, x0, eps, c):
        return _bcast(c.d_alpha, x0) * x0 + _bcast(c.d_sigma, x0) * eps

    def to_x0_eps(self, pred, x_t, c, guard, stats):
        # Solve [alpha sigma; alpha' sigma'] [x0; eps] = [x_t; v]; det = alpha sigma' - sigma alpha'
        # is 1 on the linear path and positive on VP paths (SNR strictly decreasing).
        det = c.alpha * c.d_sigma - c.sigma * c.d_alpha
        x0 = (_bcast(c.d_sigma, x_t) * x_t - _bcast(c.sigma, x_t) * pred) / _bcast(det, x_t)
        eps = (_bcast(c.alpha, x_t) * pred - _bcast(c.d_alpha, x_t) * x_t) / _bcast(det, x_t)
        return _clamp_x0(x0, guard, stats), eps

    def x0_error_weight(self, c):
        # v error = alpha' dx0 + sigma' deps with deps = -(alpha/sigma) dx0.
        return (c.d_alpha - c.d_sigma * c.alpha / c.sigma) ** 2


class X0Prediction(Prediction):
    """Clean-sample prediction."""

    name = X0

    def target(self, x0, eps, c):
        return x0

    def to_x0_eps(self, pred, x_t, c, guard, stats):
        x0 = _clamp_x0(pred, guard, stats)
        sigma = c.sigma
        if guard.enabled:
            stats.sigma_floored += int((sigma < guard.sigma_min).sum().item())
            sigma = sigma.clamp_min(guard.sigma_min)
        eps = (x_t - _bcast(c.alpha, x_t) * x0) / _bcast(sigma, x_t)
        return x0, eps

    def x0_error_weight(self, c):
        return torch.ones_like(c.alpha)


class VPVPrediction(Prediction):
    """Salimans & Ho (2022) v-prediction on a variance-preserving schedule: v = alpha eps - sigma x0.

    Not the path velocity dx/dt ("velocity"): on a VP schedule with alpha = cos phi, sigma = sin phi
    it is dx/dphi. Inverse (alpha^2 + sigma^2 = 1): x0 = alpha x_t - sigma v, eps = sigma x_t + alpha v;
    written with det = alpha^2 + sigma^2 so rounding of a VP schedule stays harmless.
    """

    name = V_PREDICTION
    variance_preserving_only = True

    def target(self, x0, eps, c):
        return _bcast(c.alpha, x0) * eps - _bcast(c.sigma, x0) * x0

    def to_x0_eps(self, pred, x_t, c, guard, stats):
        det = _bcast(c.alpha**2 + c.sigma**2, x_t)
        x0 = (_bcast(c.alpha, x_t) * x_t - _bcast(c.sigma, x_t) * pred) / det
        eps = (_bcast(c.sigma, x_t) * x_t + _bcast(c.alpha, x_t) * pred) / det
        return _clamp_x0(x0, guard, stats), eps

    def x0_error_weight(self, c):
        # v error = alpha deps - sigma dx0 with deps = -(alpha/sigma) dx0 -> -(alpha^2 + sigma^2)/sigma dx0.
        return ((c.alpha**2 + c.sigma**2) / c.sigma) ** 2


PREDICTIONS = {cls.name: cls for cls in (EpsPrediction, VelocityPrediction, X0Prediction, VPVPrediction)}


def get_prediction(name: str) -> Prediction:
    try:
        return PREDICTIONS[name]()
    except KeyError:
        raise ValueError(f"unknown prediction type {name!r}; valid: {sorted(PREDICTIONS)}") from None


def is_velocity(prediction: str) -> bool:
    """Whether an expert predicts the flow-matching velocity (an "FM expert"); every other kind (eps, x0)
    is grouped with the DDPM experts wherever the ensemble splits experts by kind (threshold routing)."""
    return get_prediction(prediction).name == VELOCITY
