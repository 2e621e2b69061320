"""Routing modes against hand-computed weights, and their validation errors."""
import math

import pytest
import torch

from hddm_core.inference.routing import Routing, entropy, routing_weights

LOGITS = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64))


def test_top1_top2_full_weights():
    top1 = routing_weights(Routing.top1(), LOGITS, 0.7, 2, 3)
    assert torch.equal(top1, torch.tensor([[1.0, 0, 0], [0, 0, 1.0]], dtype=torch.float64))
    top2 = routing_weights(Routing.top_k(2), LOGITS, 0.7, 2, 3)
    assert torch.allclose(top2[0], torch.tensor([0.625, 0.375, 0.0], dtype=torch.float64))  # 0.5/0.8, 0.3/0.8
    assert torch.allclose(top2.sum(-1), torch.ones(2, dtype=torch.float64))
    full = routing_weights(Routing.full(), LOGITS, 0.7, 2, 3)
    assert torch.allclose(full, LOGITS.exp())
    assert torch.allclose(routing_weights(Routing.top_k(3), LOGITS, 0.7, 2, 3), full)


def test_threshold_switches_at_tau_both_orders():
    fm_first = Routing.threshold(0.4, low=0, high=1)  # expert 1 at high noise, expert 0 at low noise
    assert torch.equal(routing_weights(fm_first, None, 0.41, 2, 3)[:, 1], torch.ones(2, dtype=torch.float64))
    assert torch.equal(routing_weights(fm_first, None, 0.40, 2, 3)[:, 0], torch.ones(2, dtype=torch.float64))
    assert not fm_first.needs_router(0.9, has_router=True)
    ddpm_first = Routing.threshold(0.4, low=1, high=0)
    assert torch.equal(routing_weights(ddpm_first, None, 0.9, 1, 3), torch.tensor([[1.0, 0, 0]], dtype=torch.float64))


def test_threshold_group_split_by_router_restricted_to_group():
    r = Routing.threshold(0.5, low=(0, 1), high=(2,))
    w = routing_weights(r, LOGITS, 0.2, 2, 3)
    assert torch.equal(w, torch.tensor([[1.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64))  # expert 2 excluded
    full_within = Routing.threshold(0.5, low=(0, 1), high=(2,), within="full")
    assert torch.allclose(routing_weights(full_within, LOGITS, 0.2, 2, 3)[1], torch.tensor([0.5, 0.5, 0], dtype=torch.float64))
    assert torch.allclose(routing_weights(full_within, None, 0.2, 1, 3), torch.tensor([[0.5, 0.5, 0]], dtype=torch.float64))


def test_fixed_weights_normalised():
    w = routing_weights(Routing.fixed([2, 0, 2]), None, 0.3, 3, 3)
    assert torch.equal(w, torch.tensor([[0.5, 0, 0.5]] * 3, dtype=torch.float64))


def test_entropy_bounds():
    assert math.isclose(float(entropy(torch.full((1, 4), 0.25))), math.log(4), rel_tol=1e-6)
    assert float(entropy(torch.tensor([[1.0, 0.0]]))) == 0.0


@pytest.mark.parametrize("make, match", [
    (lambda: Routing("top-3"), "unknown routing mode"),
    (lambda: Routing.top_k(0), "k >= 1"),
    (lambda: Routing.threshold(1.5, 0, 1), "tau"),
    (lambda: Routing.threshold(0.5, (), 1), "non-empty"),
    (lambda: Routing.fixed([-1, 2]), "non-negative"),
    (lambda: Routing.threshold(0.5, 0, 1, within="top-2"), "within"),
])
def test_bad_routing_is_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_routing_checked_against_ensemble():
    with pytest.raises(ValueError, match="needs a router"):
        Routing.top1().check(3, has_router=False)
    with pytest.raises(ValueError, match="only 2 experts"):
        Routing.top_k(3).check(2, has_router=True)
    with pytest.raises(ValueError, match="valid indices are 0..1"):
        Routing.threshold(0.5, 0, 5).check(2, has_router=False)
    with pytest.raises(ValueError, match="3 weights for 2 experts"):
        Routing.fixed([1, 1, 1]).check(2, has_router=False)
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        routing_weights(Routing.full(), torch.zeros(2, 4), 0.5, 2, 3)


def test_threshold_tau_is_not_snapped_to_a_neighbouring_grid_point(mixture):
    """time_grid(10) holds 0.30000000000000004 and 0.19999999999999996: tau = 0.2 and 0.3 must differ."""
    from hddm_core.diffusion.conversion import ExpertDeclaration
    from hddm_core.diffusion.sampling import time_grid
    from hddm_core.inference import EnsembleExpertHandle, sample_ensemble

    grid = time_grid(10)
    switch = {tau: [i for i, t in enumerate(grid[:-1].tolist()) if not Routing.threshold(tau, 0, 1).is_high(t)][0]
              for tau in (0.2, 0.3)}
    assert switch == {0.3: 7, 0.2: 8}  # the low group starts at t = 0.3 and t = 0.2 respectively
    d = ExpertDeclaration("velocity", "linear", "continuous")
    members = [EnsembleExpertHandle(f"e{k}", d, mixture.expert_network(k, d)) for k in range(2)]
    runs = {tau: sample_ensemble(members, list(range(16)), (2,), routing=Routing.threshold(tau, low=0, high=1),
                                 steps=10, dtype=torch.float64) for tau in (0.2, 0.3)}
    assert runs[0.3].usage[7].tolist() == [1.0, 0.0] and runs[0.2].usage[7].tolist() == [0.0, 1.0]
    assert not torch.allclose(runs[0.2].samples, runs[0.3].samples)
