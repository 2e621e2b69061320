"""Numerical safeguards for converting predictions into velocities (paper defaults).

- x0_hat is clamped to [-x0_clamp, x0_clamp] (paper: 20).
- Below alpha_min (paper: 0.01) the eps inverse x0_hat = (x_t - sigma eps)/alpha is bounded by the
  x0 clamp alone ("clamp-only"): we divide by the true alpha, not the paper's alpha_safe =
  max(alpha, 0.01), which shrinks every correct x0_hat by alpha/0.01 at the first Euler step. At
  alpha = 0 the exact limit E[x0] = data_mean is used (predictions.py; docs/safeguards.md).
  sigma is floored at sigma_min (eps from an x0-predictor at t -> 0).
- Adaptive damping (our formula; the paper names the mechanism but we choose its form): at high
  noise an eps error delta becomes a velocity error delta / alpha, so converted velocities can
  blow up as alpha -> 0. For t >= damping_t_min we compare each sample's RMS velocity with the
  largest RMS the true velocity can plausibly have,
      v_ref(t) = sqrt(alpha'(t)^2 data_rms^2 + sigma'(t)^2)      (velocity of unit-scale data),
  and rescale v <- v * min(1, damping_ratio * v_ref / rms(v)). It never touches a velocity within
  damping_ratio times its expected size (so the Gaussian closed forms pass through untouched), and
  it is applied only to converted predictions, never to a native velocity on the sampler's path.
  damping_t_min defaults to 0.5 because the paper finds DDPM->velocity stable only for t < 0.5.
  data_rms defaults to 1.0 (unit-scale latents); with other data it must come from the run's latent
  statistics (Safeguards.for_data, or sample_ensemble's data_rms), else damping fires on correct
  velocities of data with a larger RMS.
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Safeguards:
    enabled: bool = True
    x0_clamp: float = 20.0
    alpha_min: float = 0.01
    sigma_min: float = 1e-4
    damping: bool = True
    damping_t_min: float = 0.5
    damping_ratio: float = 3.0
    data_rms: float = 1.0
    data_mean: float = 0.0  # E[x0] (scalar), the eps inverse's value at pure noise

    def __post_init__(self):
        for name in ("x0_clamp", "alpha_min", "sigma_min", "damping_ratio", "data_rms"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"Safeguards.{name} must be a positive number, got {value!r}")
        if not (isinstance(self.data_mean, (int, float)) and abs(self.data_mean) < float("inf")):
            raise ValueError(f"Safeguards.data_mean must be a finite number, got {self.data_mean!r}")
        if not 0.0 <= self.damping_t_min <= 1.0:
            raise ValueError(f"Safeguards.damping_t_min must be in [0, 1], got {self.damping_t_min!r}")

    @classmethod
    def for_data(cls, x0, **overrides) -> "Safeguards":
        """Safeguards with data_mean and data_rms estimated from a sample of the run's clean latents.

        x0: tensor or array [N, ...]; the estimates are scalars over every element. Damping then
        measures velocities against this data's scale instead of the unit-scale default.
        """
        import torch

        x = torch.as_tensor(x0).double()
        if x.numel() == 0 or not bool(torch.isfinite(x).all()):
            raise ValueError(f"Safeguards.for_data needs a non-empty, finite sample of latents, got shape "
                             f"{tuple(x.shape)}")
        stats = {"data_mean": float(x.mean()), "data_rms": max(float(x.pow(2).mean().sqrt()), 1e-12)}
        return cls(**{**stats, **overrides})

    @classmethod
    def off(cls) -> "Safeguards":
        return cls(enabled=False, damping=False)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class SafeguardStats:
    """Activation counts of one conversion call (elements or samples), for reports."""

    x0_clamped: int = 0  # elements of x0_hat clamped
    low_alpha_clamped: int = 0  # samples with 0 < alpha < alpha_min whose x0_hat needed the clamp
    sigma_floored: int = 0  # samples where sigma < sigma_min
    damped: int = 0  # samples whose velocity was rescaled

    def add(self, other: "SafeguardStats") -> "SafeguardStats":
        return SafeguardStats(
            self.x0_clamped + other.x0_clamped,
            self.low_alpha_clamped + other.low_alpha_clamped,
            self.sigma_floored + other.sigma_floored,
            self.damped + other.damped,
        )

    def as_dict(self) -> dict:
        return {
            "x0_clamped": self.x0_clamped,
            "low_alpha_clamped": self.low_alpha_clamped,
            "sigma_floored": self.sigma_floored,
            "damped": self.damped,
        }
