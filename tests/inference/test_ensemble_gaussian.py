"""The ensemble sampler against closed forms on a Gaussian mixture.

Cluster k is N(m_k 1, s_k^2 I) in 2-D; expert k is the exact optimal predictor for cluster k, each
with a different prediction type / schedule / time input (conftest.MIXED); the router is the exact
posterior p(k | x_t, t). Then sum_k p(k | x_t) v_k(x_t) is exactly the mixture's probability-flow
velocity, so the full ensemble must reproduce the mixture (and match the ideal monolith sample by
sample), while Top-1 routing must not.
Tolerances (N = 1500, 50 Euler steps): component mass within 0.04 (binomial std ~0.013), mean
within 0.15 (std error ~0.06), variance within 10% (50-step Euler bias ~4% here, checked against the
monolith which shares it).
"""
import pytest
import torch

from hddm_core.diffusion.conversion import ExpertDeclaration
from hddm_core.inference import EnsembleExpertHandle, Routing, sample_ensemble
from hddm_core.inference.native import native_ddim_sample
from hddm_core.diffusion.safeguards import Safeguards

N = 1500
SEEDS = list(range(N))
GUARD = Safeguards(data_rms=3.2)  # this mixture's RMS: the damping reference of safeguards.py


@pytest.fixture(scope="module")
def runs(mixture):
    from tests.inference.conftest import MIXED

    members = [EnsembleExpertHandle(f"e{k}", d, mixture.expert_network(k, d)) for k, d in enumerate(MIXED)]
    router = mixture.posterior_router()
    out = {mode.label: sample_ensemble(members, SEEDS, (2,), router=router, routing=mode, dtype=torch.float64,
                                       guard=GUARD)
           for mode in (Routing.full(), Routing.top1(), Routing.top_k(3))}
    vd = ExpertDeclaration("velocity", "linear", "continuous")
    out["monolith"] = sample_ensemble([EnsembleExpertHandle("mono", vd, mixture.ideal_network(vd))], SEEDS, (2,),
                                      routing=Routing.fixed([1.0]), dtype=torch.float64)
    return out


def _moment_errors(mixture, x):
    mean, cov = mixture.moments()
    mass = mixture.component_mass(x)
    return ((mass - mixture.pi()).abs().max().item(), (x.mean(0) - mean).abs().max().item(),
            ((torch.cov(x.T).diagonal() / cov.diagonal()) - 1).abs().max().item())


def test_full_ensemble_reproduces_the_mixture(mixture, runs):
    mass_err, mean_err, var_err = _moment_errors(mixture, runs["full"].samples)
    assert mass_err < 0.04 and mean_err < 0.15 and var_err < 0.10, (mass_err, mean_err, var_err)


def test_full_ensemble_matches_the_ideal_monolith_sample_by_sample(runs):
    d = (runs["full"].samples - runs["monolith"].samples).norm(dim=1)
    # Only DDPM round(999 t) time rounding separates them; a handful of boundary samples may flip.
    assert d.mean() < 0.03, float(d.mean())
    assert (d > 0.1).double().mean() < 0.02


def test_top_k_with_k_equal_to_K_is_the_full_ensemble(runs):
    assert torch.equal(runs["top-3"].samples, runs["full"].samples)


def test_top1_distorts_mass_where_full_does_not(mixture, runs):
    """At high noise the posterior is near the prior, so argmax sends nearly every sample to the
    heaviest cluster (pi = 0.5) and commits: mass is lost from lighter clusters."""
    top1, full = runs["top-1"], runs["full"]
    err_top1 = (mixture.component_mass(top1.samples) - mixture.pi()).abs().max().item()
    err_full = (mixture.component_mass(full.samples) - mixture.pi()).abs().max().item()
    assert err_top1 > 0.15 > 0.04 > err_full, (err_top1, err_full)
    assert torch.allclose(top1.usage[0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    # One expert per sample per step: weight entropy 0; full keeps the router's entropy.
    assert float(top1.weight_entropy.max()) == 0.0
    assert float(full.weight_entropy[0]) > 0.9
    assert torch.allclose(full.router_entropy, full.weight_entropy)


def test_usage_rows_sum_to_one_and_track_the_posterior(mixture, runs):
    full = runs["full"]
    assert torch.allclose(full.usage.sum(1), torch.ones(len(full.times), dtype=torch.float64))
    # At t = 1 every x is pure noise: the posterior is exactly the prior, whatever x is.
    assert torch.allclose(full.usage[0], mixture.pi(), atol=1e-6)
    # Near t = 0 usage equals the final component mass.
    assert torch.allclose(full.usage[-1], mixture.component_mass(full.samples), atol=0.02)


def test_threshold_router_picks_the_right_expert_at_the_right_time(mixture):
    from tests.inference.conftest import MIXED

    calls = {k: [] for k in range(3)}

    def tracking(k, net):
        def f(x, t_net, cond=None):
            calls[k].append(x.shape[0])
            return net(x, t_net, cond)
        return f

    members = [EnsembleExpertHandle(f"e{k}", d, tracking(k, mixture.expert_network(k, d))) for k, d in enumerate(MIXED)]
    tau = 0.3
    for order, (high, low) in {"fm-first": (1, 0), "ddpm-first": (0, 1)}.items():
        for v in calls.values():
            v.clear()
        res = sample_ensemble(members, list(range(8)), (2,), router=mixture.posterior_router(),
                              routing=Routing.threshold(tau, low=low, high=high), dtype=torch.float64, steps=20)
        hi = res.times > tau + 1e-9  # routing.TAU_TOLERANCE: the grid's 0.30000000000000004 is tau
        assert torch.equal(res.usage[hi][:, high], torch.ones(int(hi.sum()), dtype=torch.float64)), order
        assert torch.equal(res.usage[~hi][:, low], torch.ones(int((~hi).sum()), dtype=torch.float64)), order
        assert res.counts.router_calls == 0  # single-expert groups need no router
        assert len(calls[high]) == int(hi.sum()) and len(calls[low]) == int((~hi).sum()) and not calls[2]
        assert torch.isnan(res.router_entropy).all()


def test_threshold_groups_use_router_within_group(mixture):
    from tests.inference.conftest import MIXED

    members = [EnsembleExpertHandle(f"e{k}", d, mixture.expert_network(k, d)) for k, d in enumerate(MIXED)]
    res = sample_ensemble(members, list(range(64)), (2,), router=mixture.posterior_router(),
                          routing=Routing.threshold(0.5, low=(0, 2), high=(1,)), dtype=torch.float64, steps=10)
    low = res.times <= 0.5
    assert torch.all(res.usage[low][:, 1] == 0) and torch.all(res.usage[~low][:, 1] == 1)
    assert res.counts.router_calls == int(low.sum())  # the router is consulted only for the 2-expert group
    assert torch.allclose(res.usage[low].sum(1), torch.ones(int(low.sum()), dtype=torch.float64))


def test_per_sample_seeds_make_samples_batch_independent(mixture, runs):
    from tests.inference.conftest import MIXED

    members = [EnsembleExpertHandle(f"e{k}", d, mixture.expert_network(k, d)) for k, d in enumerate(MIXED)]
    subset = [7, 3, 1200]
    alone = sample_ensemble(members, subset, (2,), router=mixture.posterior_router(), routing=Routing.top1(),
                            dtype=torch.float64, guard=GUARD)
    assert torch.allclose(alone.samples, runs["top-1"].samples[subset], atol=1e-9)


def test_safeguard_counts_are_reported_per_step(runs):
    # Ideal experts pass untouched, the DDPM expert's first step at alpha = 0.0064 included.
    assert runs["full"].safeguard_totals() == {"x0_clamped": 0, "low_alpha_clamped": 0, "sigma_floored": 0, "damped": 0}
    # An eps expert answering 0 at t = 1 (alpha_e = 0.0064) gives x0_hat = x / 0.0064: clamped there only.
    d = ExpertDeclaration("eps", "ddpm-linear", "continuous")
    res = sample_ensemble([EnsembleExpertHandle("zero", d, lambda x, t, c: torch.zeros_like(x))], list(range(8)),
                          (2,), routing=Routing.fixed([1.0]), dtype=torch.float64, steps=50)
    low = res.safeguards[:, 0, 1]
    assert int(low[0]) == 8 and int(low[1:].sum()) == 0
    assert res.safeguard_totals()["low_alpha_clamped"] == 8
    assert res.summary()["safeguards_per_step"][0]["low_alpha_clamped"] == 8


def test_native_ddim_of_a_ddpm_monolith_reproduces_the_mixture(mixture):
    d = ExpertDeclaration("eps", "ddpm-linear", "discrete-999")
    x = native_ddim_sample(mixture.ideal_network(d), d, SEEDS, (2,), dtype=torch.float64)
    mass_err, mean_err, var_err = _moment_errors(mixture, x)
    assert mass_err < 0.04 and mean_err < 0.15 and var_err < 0.10, (mass_err, mean_err, var_err)
