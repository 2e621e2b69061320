"""Salimans & Ho v-prediction (v = alpha eps - sigma x0, VP schedules) against closed forms."""
import pytest
import torch

from hddm_core.diffusion.conversion import ExpertDeclaration, expert_velocity
from hddm_core.diffusion.predictions import get_prediction
from hddm_core.diffusion.safeguards import Safeguards, SafeguardStats
from hddm_core.diffusion.schedules import LinearPath, get_schedule
from hddm_core.oracles.gaussian import GaussianData

DATA = GaussianData(mean=0.5, std=0.7)
VP = ["ddpm-linear", "cosine"]
T = torch.tensor([0.0, 0.02, 0.3, 0.5, 0.8, 0.99, 1.0], dtype=torch.float64)


def _draws():
    g = torch.Generator().manual_seed(0)
    return torch.randn(len(T), 6, generator=g, dtype=torch.float64), torch.randn(len(T), 6, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("schedule", VP)
def test_target_inverse_round_trip_exactly(schedule):
    x0, eps = _draws()
    c = get_schedule(schedule).coefficients(T)
    v_pred = get_prediction("v-prediction")
    v = v_pred.target(x0, eps, c)
    assert torch.allclose(v, c.alpha[:, None] * eps - c.sigma[:, None] * x0, atol=0)
    x_t = c.alpha[:, None] * x0 + c.sigma[:, None] * eps
    x0_back, eps_back = v_pred.to_x0_eps(v, x_t, c, Safeguards.off(), SafeguardStats())
    assert torch.allclose(x0_back, x0, atol=1e-12) and torch.allclose(eps_back, eps, atol=1e-12)


@pytest.mark.parametrize("schedule", VP)
def test_v_is_dx_dphi_not_the_path_velocity(schedule):
    """On a VP schedule alpha = cos phi, sigma = sin phi: dx/dt = (dphi/dt) v with dphi/dt = sigma'/alpha."""
    x0, eps = _draws()
    inner = slice(1, -1)  # dphi/dt = sigma'/alpha is 0/0 at the schedule's ends
    c = get_schedule(schedule).coefficients(T[inner])
    v = get_prediction("v-prediction").target(x0[inner], eps[inner], c)
    velocity = get_prediction("velocity").target(x0[inner], eps[inner], c)
    assert torch.allclose(velocity, (c.d_sigma / c.alpha)[:, None] * v, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(velocity, v, atol=1e-3)  # a different quantity


@pytest.mark.parametrize("schedule", VP)
def test_ideal_v_expert_converts_to_the_analytic_velocity(schedule):
    decl = ExpertDeclaration("v-prediction", schedule, "continuous")
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.3
    # ddpm-linear ends at SNR 0.0064, so only cosine (alpha(1) = 0) is exact at t = 1 too
    for tv in (0.02, 0.3, 0.7, 0.98) + ((1.0,) if schedule == "cosine" else ()):
        t = torch.full((16,), tv, dtype=torch.float64)
        v, stats = expert_velocity(DATA.ideal_network(decl), x, t, declaration=decl)
        assert torch.allclose(v, DATA.optimal_velocity(x, LinearPath().coefficients(t)), atol=1e-9), tv
        assert stats.as_dict() == {k: 0 for k in stats.as_dict()}


def test_x0_error_weight_matches_the_loss():
    x0, eps = _draws()
    c = get_schedule("cosine").coefficients(T[1:-1])
    p = get_prediction("v-prediction")
    dx0 = 1e-3 * torch.ones_like(x0[1:-1])
    x_t = c.alpha[:, None] * x0[1:-1] + c.sigma[:, None] * eps[1:-1]
    # at fixed x_t, moving x0 by dx0 moves eps by -(alpha/sigma) dx0
    eps2 = (x_t - c.alpha[:, None] * (x0[1:-1] + dx0)) / c.sigma[:, None]
    dv = p.target(x0[1:-1] + dx0, eps2, c) - p.target(x0[1:-1], eps[1:-1], c)
    assert torch.allclose(dv.pow(2).sum(1), p.x0_error_weight(c) * dx0.pow(2).sum(1), rtol=1e-6)


def test_v_prediction_needs_a_variance_preserving_schedule():
    with pytest.raises(ValueError, match="'v-prediction' is defined on variance-preserving schedules only, got "
                                         "schedule 'linear'; valid: \\['cosine', 'ddpm-linear'\\]"):
        ExpertDeclaration("v-prediction", "linear", "continuous")
