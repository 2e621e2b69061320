"""Ideal experts of every prediction type and schedule, through every routing mode, at 1..1000 steps.

Expert j is the exact predictor of mixture cluster j % 3 with declaration DECLS[j]; the router gives
expert j the exact posterior of its cluster divided by the number of experts sharing that cluster,
so sum_j p_j v_j is still the mixture's probability-flow velocity (the Full ensemble IS the
monolith). Each expert carries its cluster's mean (its exact x0 at alpha = 0); with the data scale
from Safeguards.for_data no safeguard may fire, at the first step (t = 1, alpha = 0) included.
"""
import math

import pytest
import torch

from hddm_core.diffusion.conversion import ExpertDeclaration
from hddm_core.diffusion.predictions import PREDICTIONS, get_prediction
from hddm_core.diffusion.safeguards import Safeguards
from hddm_core.diffusion.schedules import SCHEDULES
from hddm_core.diffusion.time_inputs import continuous_time
from hddm_core.inference import EnsembleExpertHandle, Routing, sample_ensemble

DECLS = [ExpertDeclaration(p, s, "continuous") for p in sorted(PREDICTIONS) for s in sorted(SCHEDULES)
         if SCHEDULES[s].variance_preserving or not get_prediction(p).variance_preserving_only]
ZERO = {"x0_clamped": 0, "low_alpha_clamped": 0, "sigma_floored": 0, "damped": 0}
B = 24


def ensemble(mixture, decls):
    members = [EnsembleExpertHandle(f"{j}:{d.prediction}/{d.schedule}", d, mixture.expert_network(j % mixture.k, d),
                                    data_mean=mixture.means[j % mixture.k]) for j, d in enumerate(decls)]
    owner = torch.tensor([j % mixture.k for j in range(len(decls))])
    share = torch.log(torch.bincount(owner, minlength=mixture.k).double())[owner]

    def router(x, t_net):
        t = continuous_time(t_net.double().cpu(), "continuous")
        return (mixture.log_posterior(x, t)[:, owner] - share).to(x.dtype)

    return members, router


def modes(k):
    return [Routing.top1(), Routing.top_k(2), Routing.full(),
            Routing.threshold(0.5, low=tuple(range(0, k, 2)), high=tuple(range(1, k, 2))),
            Routing.threshold(0.3, low=0, high=1), Routing.fixed([1.0 + (j % 3) for j in range(k)])]


@pytest.fixture(scope="module")
def guard(mixture):
    return Safeguards.for_data(mixture.sample(20000, torch.Generator().manual_seed(0))[0])


def test_every_prediction_type_and_schedule_is_covered():
    assert len(DECLS) == 11 and {d.prediction for d in DECLS} == set(PREDICTIONS)


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 50])
def test_no_safeguard_fires_on_ideal_experts_in_any_routing_mode(mixture, guard, steps):
    members, router = ensemble(mixture, DECLS)
    for routing in modes(len(members)):
        res = sample_ensemble(members, list(range(B)), (2,), router=router, routing=routing, steps=steps,
                              dtype=torch.float64, guard=guard)
        assert res.safeguard_totals() == ZERO, (routing.label, steps, res.summary()["safeguards_per_step"])
        assert int(res.nonfinite.sum()) == 0 and torch.isfinite(res.samples).all()


def test_no_safeguard_fires_at_the_ends_of_a_1000_step_grid(mixture, guard):
    """The 1000-step grid's first and last 20 points (alpha resp. sigma smallest), every mode."""
    from hddm_core.diffusion.sampling import time_grid

    g = time_grid(1000)
    grid = torch.cat([g[:20], g[-20:]])
    members, router = ensemble(mixture, DECLS)
    for routing in modes(len(members)):
        res = sample_ensemble(members, list(range(B)), (2,), router=router, routing=routing, grid=grid,
                              dtype=torch.float64, guard=guard)
        assert res.safeguard_totals() == ZERO, routing.label


@pytest.mark.slow
def test_no_safeguard_fires_at_1000_steps(mixture, guard):
    members, router = ensemble(mixture, DECLS)
    res = sample_ensemble(members, list(range(8)), (2,), router=router, routing=Routing.full(), steps=1000,
                          dtype=torch.float64, guard=guard)
    assert res.safeguard_totals() == ZERO


@pytest.mark.parametrize("steps", [1, 3, 50])
def test_full_equals_the_monolith_with_the_guards_on(mixture, guard, steps):
    """Schedules reaching SNR 0 and infinity (linear, cosine): equal to float64 rounding. DDPM's
    linear betas span SNR 0.0064..100 only, so at t = 1 (and t < 0.01) its experts answer for the
    nearest SNR they know: a stated 3e-2 per sample (measured 1.1e-2, 1.9e-2, 9e-4 at 1, 3, 50 steps)."""
    vd = ExpertDeclaration("velocity", "linear", "continuous")
    mono = sample_ensemble([EnsembleExpertHandle("mono", vd, mixture.ideal_network(vd))], list(range(B)), (2,),
                           routing=Routing.fixed([1.0]), steps=steps, dtype=torch.float64, guard=guard)
    for ddpm, tol in ((False, 1e-9), (True, 3e-2)):
        decls = [d for d in DECLS if (d.schedule == "ddpm-linear") == ddpm]
        members, router = ensemble(mixture, decls)
        full = sample_ensemble(members, list(range(B)), (2,), router=router, routing=Routing.full(), steps=steps,
                               dtype=torch.float64, guard=guard)
        err = float((full.samples - mono.samples).abs().max())
        assert err < tol, (ddpm, steps, err)
        assert full.safeguard_totals() == ZERO
        assert math.isfinite(err)
