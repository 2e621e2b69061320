"""Noise schedules x_t = alpha(t) x0 + sigma(t) eps, with their time derivatives.

t = 0 is data, t = 1 is noise (see hddm_core/__init__.py). Each schedule returns alpha, sigma and
d alpha/dt, d sigma/dt together (SiT's transport/path.py habit), maps continuous t to and from the
discrete index 0..999 used by DDPM-style networks, and inverts its log signal-to-noise ratio so
the conversion module can move a state from one schedule to another at equal SNR.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NUM_TRAIN_STEPS = 1000  # discrete DDPM steps (Ho et al. 2020); index i <-> t = i / 999


@dataclass(frozen=True)
class PathCoefficients:
    """alpha(t), sigma(t) and their derivatives, all broadcastable like t."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    d_alpha: torch.Tensor
    d_sigma: torch.Tensor


class Schedule:
    """Base class: subclasses implement `coefficients` (float64 inside for accuracy)."""

    name: str = "abstract"
    variance_preserving: bool = False

    def coefficients(self, t: torch.Tensor) -> PathCoefficients:  # pragma: no cover - abstract
        raise NotImplementedError

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.coefficients(t).alpha

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.coefficients(t).sigma

    # -- discrete index <-> continuous time ---------------------------------------------------
    @staticmethod
    def t_to_index(t: torch.Tensor) -> torch.Tensor:
        """round(999 t): the time input of DDPM / converted ImageNet-DiT networks."""
        return torch.round(torch.as_tensor(t) * (NUM_TRAIN_STEPS - 1)).long().clamp(0, NUM_TRAIN_STEPS - 1)

    @staticmethod
    def index_to_t(index: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(index, dtype=torch.float64) / (NUM_TRAIN_STEPS - 1)

    # -- signal-to-noise ----------------------------------------------------------------------
    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """log(alpha / sigma); decreasing in t, +inf at a clean endpoint, -inf at pure noise."""
        c = self.coefficients(torch.as_tensor(t, dtype=torch.float64))
        return torch.log(c.alpha) - torch.log(c.sigma)

    def t_from_log_snr(self, log_snr: torch.Tensor, iterations: int = 60) -> torch.Tensor:
        """Invert log_snr by bisection on [0, 1] (monotone for every schedule here).

        Targets above the schedule's range give t = 0, below it t = 1: the conversion module then
        rescales by the norm sqrt(alpha^2 + sigma^2), which stays finite at both ends.
        """
        target = torch.as_tensor(log_snr, dtype=torch.float64)
        lo = torch.zeros_like(target)
        hi = torch.ones_like(target)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > target  # still too clean: move right
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearPath(Schedule):
    """Rectified-flow / flow-matching path: alpha = 1 - t, sigma = t, so v = eps - x0."""

    name = "linear"

    def coefficients(self, t: torch.Tensor) -> PathCoefficients:
        t = torch.as_tensor(t, dtype=torch.float64)
        one = torch.ones_like(t)
        return PathCoefficients(alpha=1.0 - t, sigma=t.clone(), d_alpha=-one, d_sigma=one)

    def t_from_log_snr(self, log_snr: torch.Tensor, iterations: int = 0) -> torch.Tensor:
        # sigma / alpha = t / (1 - t) = exp(-log_snr)  =>  t = sigmoid(-log_snr); exact.
        return torch.sigmoid(-torch.as_tensor(log_snr, dtype=torch.float64))


class DDPMLinearBeta(Schedule):
    """DDPM's discrete linear betas (1e-4 .. 0.02, 1000 steps), variance preserving.

    alpha_bar_i = prod_{j <= i} (1 - beta_j) at index i = 999 t. Between grid points log(alpha_bar)
    is interpolated linearly, so values are exact on the grid (what the network was trained on)
    and alpha, sigma keep alpha^2 + sigma^2 = 1 with a well-defined derivative everywhere.
    """

    name = "ddpm-linear"
    variance_preserving = True

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, steps: int = NUM_TRAIN_STEPS):
        if not (0.0 < beta_start < beta_end < 1.0):
            raise ValueError(f"DDPM betas must satisfy 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        self.beta_start, self.beta_end, self.steps = beta_start, beta_end, steps
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        self.log_alpha_bar = torch.cumsum(torch.log1p(-betas), dim=0)  # [steps]

    def _log_alpha_bar(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = t.clamp(0.0, 1.0) * (self.steps - 1)
        lo = pos.floor().long().clamp(0, self.steps - 2)
        frac = pos - lo
        a, b = self.log_alpha_bar[lo], self.log_alpha_bar[lo + 1]
        return a + frac * (b - a), (b - a) * (self.steps - 1)  # value, d/dt

    def coefficients(self, t: torch.Tensor) -> PathCoefficients:
        t = torch.as_tensor(t, dtype=torch.float64)
        lab, d_lab = self._log_alpha_bar(t)
        alpha_bar = torch.exp(lab)
        alpha = torch.sqrt(alpha_bar)
        sigma = torch.sqrt(-torch.expm1(lab))  # sqrt(1 - alpha_bar), accurate near t = 0
        d_alpha = 0.5 * alpha * d_lab
        # d sigma = -alpha d_alpha / sigma; at t=0 sigma = 1e-2 (beta_0 > 0) so this is finite.
        d_sigma = -alpha * d_alpha / sigma
        return PathCoefficients(alpha, sigma, d_alpha, d_sigma)

    def __repr__(self) -> str:
        return f"DDPMLinearBeta(beta_start={self.beta_start}, beta_end={self.beta_end}, steps={self.steps})"


class CosineVP(Schedule):
    """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021, eq. 17) in continuous time.

    alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t + s) / (1 + s)) * pi / 2), s = 0.008. alpha(1) = 0,
    so at t = 1 the state is pure noise, like the linear path.
    """

    name = "cosine"
    variance_preserving = True

    def __init__(self, offset: float = 0.008):
        if not offset > 0:
            raise ValueError(f"cosine schedule offset must be > 0, got {offset}")
        self.offset = offset

    def coefficients(self, t: torch.Tensor) -> PathCoefficients:
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0.0, 1.0)
        s = self.offset
        scale = math.pi / 2 / (1 + s)
        phase0 = s * scale
        phase = (t + s) * scale
        c0 = math.cos(phase0)
        alpha = torch.cos(phase) / c0
        # sigma = sqrt(1 - alpha^2) written stably: (c0^2 - cos^2) = sin(phase - phase0) sin(phase + phase0)
        sigma = torch.sqrt((torch.sin(phase - phase0) * torch.sin(phase + phase0)).clamp_min(0.0)) / c0
        d_alpha = -torch.sin(phase) * scale / c0
        # d sigma = -alpha d_alpha / sigma; limit at t = 0 is finite only in the one-sided sense,
        # so floor sigma in the division (the sampler never evaluates exactly t = 0).
        d_sigma = -alpha * d_alpha / sigma.clamp_min(1e-12)
        return PathCoefficients(alpha, sigma, d_alpha, d_sigma)

    def __repr__(self) -> str:
        return f"CosineVP(offset={self.offset})"


SCHEDULES = {"linear": LinearPath, "ddpm-linear": DDPMLinearBeta, "cosine": CosineVP}


def get_schedule(name: str) -> Schedule:
    """Build a schedule by name; the single place schedule names are dispatched."""
    try:
        return SCHEDULES[name]()
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; valid: {sorted(SCHEDULES)}") from None
