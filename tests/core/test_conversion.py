"""Conversions checked against the Gaussian closed forms (hddm_core/gaussian.py), not shapes."""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hddm_core.diffusion.conversion import ExpertDeclaration, ExpertVelocityField, expert_velocity
from hddm_core.oracles.gaussian import GaussianData
from hddm_core.diffusion.safeguards import Safeguards
from hddm_core.diffusion.schedules import LinearPath
from hddm_core.diffusion.time_inputs import TIME_INPUTS

DATA = GaussianData(mean=0.5, std=0.7)
PREDICTIONS = ["eps", "velocity", "x0"]
SCHEDULES = ["linear", "ddpm-linear", "cosine"]
TIMES = [0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98]


def analytic_velocity(x, t):
    return DATA.optimal_velocity(x, LinearPath().coefficients(t))


@pytest.mark.parametrize("prediction,schedule", list(itertools.product(PREDICTIONS, SCHEDULES)))
def test_ideal_expert_converts_to_the_analytic_velocity(prediction, schedule):
    decl = ExpertDeclaration(prediction, schedule, "continuous")
    net = DATA.ideal_network(decl)
    x = torch.randn(32, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1.3
    for tv in TIMES:
        t = torch.full((32,), tv, dtype=torch.float64)
        v, stats = expert_velocity(net, x, t, declaration=decl)
        assert torch.allclose(v, analytic_velocity(x, t), atol=1e-10, rtol=1e-10), (prediction, schedule, tv)
        assert stats.as_dict() == {"x0_clamped": 0, "low_alpha_clamped": 0, "sigma_floored": 0, "damped": 0}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_discrete_time_input_error_is_only_the_rounding(schedule):
    """A discrete-999 network sees round(999 t_e): the velocity error stays below 2% of |v|."""
    decl = ExpertDeclaration("eps", schedule, "discrete-999")
    net = DATA.ideal_network(decl)
    x = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for tv in [0.05, 0.3, 0.6, 0.9]:
        t = torch.full((64,), tv, dtype=torch.float64)
        v, _ = expert_velocity(net, x, t, declaration=decl)
        ref = analytic_velocity(x, t)
        assert (v - ref).abs().max() < 0.02 * ref.abs().max()


def test_linear_eps_expert_matches_the_paper_formula():
    """Paper: x0_hat = (x_t - t eps)/(1 - t), v = eps - x0_hat."""
    g = torch.Generator().manual_seed(2)
    eps_out = torch.randn(16, 8, dtype=torch.float64, generator=g)
    x = torch.randn(16, 8, dtype=torch.float64, generator=g)
    t = torch.rand(16, dtype=torch.float64, generator=g) * 0.9
    decl = ExpertDeclaration("eps", "linear", "continuous")
    v, _ = expert_velocity(lambda x_, nt, c: eps_out, x, t, declaration=decl, guard=Safeguards(damping=False))
    tt = t[:, None]
    x0_hat = (x - tt * eps_out) / (1 - tt)
    assert torch.allclose(v, eps_out - x0_hat, atol=1e-12)


def test_native_velocity_passes_through_untouched():
    out = torch.full((4, 2), 1e3)
    decl = ExpertDeclaration("velocity", "linear", "scaled-1000")
    v, stats = expert_velocity(lambda x, nt, c: out, torch.zeros(4, 2), torch.full((4,), 0.99), declaration=decl)
    assert torch.equal(v, out) and stats.damped == 0 and stats.x0_clamped == 0


def test_network_sees_its_own_time_convention():
    seen = {}

    def net(x, nt, c):
        seen["t"] = nt.clone()
        return torch.zeros_like(x)

    for time_input, expected in [("discrete-999", 500.0), ("scaled-1000", 500.0), ("continuous", 0.5)]:
        decl = ExpertDeclaration("velocity", "linear", time_input)
        expert_velocity(net, torch.zeros(2, 3), torch.full((2,), 0.5), declaration=decl)
        assert torch.allclose(seen["t"].double(), torch.full((2,), expected, dtype=torch.float64)), time_input
    # a DDPM expert is queried at the SNR-matched time, not the sampler's t
    decl = ExpertDeclaration("eps", "ddpm-linear", "discrete-999")
    expert_velocity(net, torch.zeros(1, 3), torch.tensor([0.5]), declaration=decl)
    assert 250 < float(seen["t"]) < 500  # linear t=0.5 has SNR 1; DDPM reaches SNR 1 near index 330


def test_safeguards_clamp_floor_and_damp_at_high_noise():
    # An eps expert at t = 0.999 on the linear path: alpha = 0.001 < 0.01 is floored, the huge
    # x0_hat is clamped to 20, and the resulting velocity is damped to 3 x its expected RMS.
    decl = ExpertDeclaration("eps", "linear", "continuous")
    x = torch.full((2, 8), 50.0)
    t = torch.full((2,), 0.999, dtype=torch.float64)
    v, stats = expert_velocity(lambda x_, nt, c: torch.zeros_like(x_), x, t, declaration=decl)
    assert stats.low_alpha_clamped == 2 and stats.x0_clamped == 16 and stats.damped == 2
    rms = v.pow(2).mean(1).sqrt()
    assert torch.allclose(rms, torch.full((2,), 3.0 * 2**0.5), rtol=1e-5)
    # the same call with safeguards off divides by 0.001 and returns |v| ~ 5e4
    v_off, _ = expert_velocity(lambda x_, nt, c: torch.zeros_like(x_), x, t, declaration=decl,
                               guard=Safeguards.off())
    assert v_off.abs().max() > 1e4


def test_damping_respects_its_time_threshold():
    decl = ExpertDeclaration("eps", "linear", "continuous")
    x = torch.full((1, 8), 30.0)
    _, low = expert_velocity(lambda x_, nt, c: torch.zeros_like(x_), x, torch.tensor([0.4]), declaration=decl)
    assert low.damped == 0  # below damping_t_min = 0.5 the paper finds conversion stable


def test_declaration_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown prediction type 'v'.*eps.*velocity.*x0"):
        ExpertDeclaration("v", "linear", "continuous")
    with pytest.raises(ValueError, match="unknown time input 'sigma'"):
        ExpertDeclaration("eps", "linear", "sigma")
    with pytest.raises(ValueError, match="damping_ratio must be a positive number, got -1"):
        Safeguards(damping_ratio=-1)


@settings(max_examples=150, deadline=None)
@given(
    t=st.floats(0.0, 1.0),
    magnitude=st.floats(0.0, 1e4),
    prediction=st.sampled_from(PREDICTIONS),
    schedule=st.sampled_from(SCHEDULES),
    time_input=st.sampled_from(list(TIME_INPUTS)),
    sampler=st.sampled_from(SCHEDULES),
    out_scale=st.floats(0.0, 1e4),
)
def test_property_converted_velocity_is_finite(t, magnitude, prediction, schedule, time_input, sampler, out_scale):
    from hddm_core.diffusion.schedules import get_schedule

    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, generator=g) * magnitude
    decl = ExpertDeclaration(prediction, schedule, time_input)
    net = lambda x_, nt, c: torch.randn(x_.shape, generator=torch.Generator().manual_seed(4)) * out_scale
    expert = ExpertVelocityField(net, decl, sampler=get_schedule(sampler))
    v = expert(x, torch.full((3,), t, dtype=torch.float64))
    assert torch.isfinite(v).all(), (t, magnitude, prediction, schedule, sampler)
    # the ideal expert of the same declaration is finite too, even at the endpoints
    v_ideal = ExpertVelocityField(DATA.ideal_network(decl), decl, sampler=get_schedule(sampler))(
        x.double(), torch.full((3,), t, dtype=torch.float64))
    assert torch.isfinite(v_ideal).all()


def test_snr_matched_time_cache_equals_direct_bisection():
    from hddm_core.diffusion.conversion import snr_matched_time
    from hddm_core.diffusion.schedules import DDPMLinearBeta

    sampler, expert = LinearPath(), DDPMLinearBeta()
    t = torch.tensor([0.9, 0.1, 0.9, 0.5, 0.0, 1.0, 0.1], dtype=torch.float64)
    direct = expert.t_from_log_snr(sampler.log_snr(t))
    for _ in range(2):  # the second call is served from the cache
        got = snr_matched_time(t, sampler, expert)
        assert torch.equal(got, direct)
    # matched times have equal sigma/alpha (away from the expert's range ends)
    inner = t[(t > 0) & (t < 0.99)]
    assert torch.allclose(expert.log_snr(snr_matched_time(inner, sampler, expert)), sampler.log_snr(inner), atol=1e-9)


def test_damping_leaves_ideal_experts_alone_given_the_data_scale():
    """Data of mean 3 (RMS 3.08): with the unit-scale default damping rescales correct velocities;
    with the statistics estimated from the data (Safeguards.for_data) it never fires."""
    data = GaussianData(mean=3.0, std=0.7)
    guard = Safeguards.for_data(data.sample(4096, generator=torch.Generator().manual_seed(0)))
    assert abs(guard.data_rms - (9 + 0.49) ** 0.5) < 0.02 and abs(guard.data_mean - 3.0) < 0.02
    damped_default = damped_fitted = 0
    for prediction, schedule in itertools.product(PREDICTIONS, SCHEDULES):
        decl = ExpertDeclaration(prediction, schedule, "continuous")
        for tv in (0.5, 0.7, 0.9, 0.98, 1.0):
            c = LinearPath().coefficients(torch.tensor(tv, dtype=torch.float64))
            x = c.alpha * data.sample(256, generator=torch.Generator().manual_seed(2)) + \
                c.sigma * torch.randn(256, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
            t = torch.full((256,), tv, dtype=torch.float64)
            damped_default += expert_velocity(data.ideal_network(decl), x, t, declaration=decl,
                                              guard=Safeguards(data_mean=3.0))[1].damped
            damped_fitted += expert_velocity(data.ideal_network(decl), x, t, declaration=decl, guard=guard)[1].damped
    assert damped_default > 0 and damped_fitted == 0, (damped_default, damped_fitted)
    with pytest.raises(ValueError, match="non-empty, finite"):
        Safeguards.for_data(torch.tensor([1.0, float("nan")]))
