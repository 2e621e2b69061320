import math

import pytest
import torch

from hddm_core.diffusion.schedules import CosineVP, DDPMLinearBeta, LinearPath, get_schedule

ALL = [LinearPath(), DDPMLinearBeta(), CosineVP()]
INTERIOR = torch.tensor([0.01, 0.2, 0.37, 0.5, 0.73, 0.9], dtype=torch.float64)


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_derivatives_match_finite_differences(schedule):
    h = 1e-6
    c = schedule.coefficients(INTERIOR)
    for name, d in (("alpha", c.d_alpha), ("sigma", c.d_sigma)):
        f = getattr(schedule, name)
        numeric = (f(INTERIOR + h) - f(INTERIOR - h)) / (2 * h)
        assert torch.allclose(numeric, d, atol=1e-6, rtol=1e-6), name


@pytest.mark.parametrize("schedule", [DDPMLinearBeta(), CosineVP()], ids=repr)
def test_variance_preserving(schedule):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    c = schedule.coefficients(t)
    assert torch.allclose(c.alpha**2 + c.sigma**2, torch.ones_like(t), atol=1e-12)


def test_linear_path_is_flow_matching():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    c = LinearPath().coefficients(t)
    assert torch.equal(c.alpha, 1 - t) and torch.equal(c.sigma, t)
    assert torch.all(c.d_alpha == -1) and torch.all(c.d_sigma == 1)


def test_ddpm_grid_values_are_the_discrete_alpha_bar():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    s = DDPMLinearBeta()
    idx = torch.tensor([0, 1, 250, 500, 999])
    got = s.alpha(s.index_to_t(idx)) ** 2
    assert torch.allclose(got, alpha_bar[idx], rtol=1e-12)
    # endpoints: alpha_bar_0 = 1 - 1e-4, alpha_bar_999 ~ 4.04e-5 (Ho et al.)
    assert math.isclose(float(got[0]), 1 - 1e-4, rel_tol=1e-12)
    assert 3.9e-5 < float(got[-1]) < 4.2e-5


def test_index_mapping_round_trip():
    s = DDPMLinearBeta()
    idx = torch.arange(1000)
    assert torch.equal(s.t_to_index(s.index_to_t(idx)), idx)
    assert s.t_to_index(torch.tensor([0.0, 0.5, 1.0])).tolist() == [0, 500, 999]  # round(999 t)


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_log_snr_inverse(schedule):
    back = schedule.t_from_log_snr(schedule.log_snr(INTERIOR))
    assert torch.allclose(back, INTERIOR, atol=1e-9)
    # beyond the range: +inf SNR -> t = 0, -inf -> t = 1
    ends = schedule.t_from_log_snr(torch.tensor([math.inf, -math.inf], dtype=torch.float64))
    assert ends[0] < 1e-9 and ends[1] > 1 - 1e-9


def test_unknown_schedule_names_valid_options():
    with pytest.raises(ValueError, match=r"unknown schedule 'vp'.*cosine.*ddpm-linear.*linear"):
        get_schedule("vp")


def test_ddpm_rejects_bad_betas():
    with pytest.raises(ValueError, match="beta_start"):
        DDPMLinearBeta(beta_start=0.03, beta_end=0.02)
