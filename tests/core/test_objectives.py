"""Objectives: targets, time sampling, the optimum's loss in closed form, the paper's weighting."""
import pytest
import torch

from hddm_core.diffusion.conversion import ExpertDeclaration
from hddm_core.oracles.gaussian import GaussianData
from hddm_core.diffusion.objectives import OBJECTIVES, get_objective, sample_time, x0_error_weight
from hddm_core.diffusion.predictions import get_prediction
from hddm_core.diffusion.safeguards import Safeguards, SafeguardStats
from hddm_core.diffusion.schedules import get_schedule

DATA = GaussianData(mean=0.5, std=0.7)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_ideal_network_attains_the_closed_form_minimum(name):
    """E||f*(x_t) - target||^2 at fixed t equals the posterior variance of the target."""
    obj = get_objective(name, time_input="continuous")
    net = DATA.ideal_network(obj.declaration)
    g = torch.Generator().manual_seed(0)
    x0 = DATA.sample(20000, (4,), generator=g)
    c = get_schedule(obj.schedule).coefficients(torch.tensor(0.4, dtype=torch.float64))
    a, s, da, ds = (float(v) for v in (c.alpha, c.sigma, c.d_alpha, c.d_sigma))
    v_x = a * a * DATA.std**2 + s * s
    var_x0 = DATA.std**2 * s * s / v_x  # Var[x0 | x_t]
    expected = {"eps": var_x0 * a * a / (s * s), "x0": var_x0,
                "velocity": var_x0 * (da - ds * a / s) ** 2}[obj.prediction]
    t = torch.full((x0.shape[0],), 0.4, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    out = obj(net, x0, t=t, noise=noise)
    assert abs(float(out.loss) - expected) < 0.03 * expected
    # any other predictor does worse on the same draws: shrink the optimum by 10%
    worse = obj(lambda x, nt, cond: 0.9 * net(x, nt, cond), x0, t=t, noise=noise)
    assert float(worse.loss) > float(out.loss)


def test_flow_matching_target_is_eps_minus_x0():
    x0, eps = torch.randn(3, 4), torch.randn(3, 4)
    c = get_schedule("linear").coefficients(torch.rand(3, dtype=torch.float64))
    assert torch.allclose(get_prediction("velocity").target(x0, eps, c), eps - x0)


def test_time_sampling():
    g = torch.Generator().manual_seed(0)
    d = sample_time("uniform-discrete", 5000, g)
    idx = d * 999
    assert torch.allclose(idx, idx.round()) and idx.min() >= 0 and idx.max() <= 999
    u = sample_time("uniform", 5000, g)
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.02
    with pytest.raises(ValueError, match="unknown time sampling 'beta'"):
        sample_time("beta", 3)


def test_objective_presets_and_errors():
    ddpm = get_objective("ddpm-eps")
    assert (ddpm.prediction, ddpm.schedule, ddpm.time_input) == ("eps", "ddpm-linear", "discrete-999")
    fm = get_objective("flow-matching")
    assert (fm.prediction, fm.schedule) == ("velocity", "linear")
    with pytest.raises(ValueError, match="unknown objective 'ddim'.*ddpm-eps.*flow-matching.*x0"):
        get_objective("ddim")
    with pytest.raises(ValueError, match="unknown schedule"):
        get_objective("flow-matching", schedule="edm")


def test_loss_weighting_in_clean_sample_error():
    """Perturb x0_hat by d at fixed x_t and measure the induced prediction errors numerically.

    Linear path: eps error^2 = ((1-t)/t)^2 d^2, velocity error^2 = d^2 / t^2, so
    w_eps / w_velocity = alpha_t^2 in clean-sample error (and w_velocity / w_eps = 1/alpha_t^2
    when written in eps error).
    """
    lin = get_schedule("linear")
    t = torch.tensor([0.1, 0.3, 0.5, 0.8], dtype=torch.float64)
    c = lin.coefficients(t)
    x_t = torch.randn(4, 6, dtype=torch.float64)
    x0_true = torch.randn(4, 6, dtype=torch.float64)
    delta = 1e-3 * torch.randn(4, 6, dtype=torch.float64)
    eps_of = lambda x0: (x_t - c.alpha[:, None] * x0) / c.sigma[:, None]  # eps consistent with x_t
    vel_of = lambda x0: c.d_alpha[:, None] * x0 + c.d_sigma[:, None] * eps_of(x0)
    sq = lambda e: e.pow(2).sum(1)
    w_eps = sq(eps_of(x0_true + delta) - eps_of(x0_true)) / sq(delta)
    w_vel = sq(vel_of(x0_true + delta) - vel_of(x0_true)) / sq(delta)
    assert torch.allclose(w_eps, x0_error_weight("eps", "linear", t), rtol=1e-8)
    assert torch.allclose(w_vel, x0_error_weight("velocity", "linear", t), rtol=1e-8)
    assert torch.allclose(w_eps / w_vel, c.alpha**2, rtol=1e-8)
    assert torch.allclose(w_vel / w_eps, 1 / c.alpha**2, rtol=1e-8)
    # the same weights agree with the prediction wrappers' inverse maps
    stats = SafeguardStats()
    eps_hat = eps_of(x0_true + delta)
    x0_back, _ = get_prediction("eps").to_x0_eps(eps_hat, x_t, c, Safeguards.off(), stats)
    assert torch.allclose(x0_back, x0_true + delta, atol=1e-10)


def test_objective_loss_backpropagates_into_a_model():
    model = torch.nn.Linear(4, 4)
    obj = get_objective("flow-matching")
    out = obj(lambda x, nt, c: model(x), torch.randn(8, 4), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()
    assert out.per_sample.shape == (8,) and ExpertDeclaration("velocity", "linear", "scaled-1000") == obj.declaration
