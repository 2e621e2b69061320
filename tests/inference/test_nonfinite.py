"""Silent NaN images: non-finite velocities, router outputs and samples are caught per step."""
import pytest
import torch

from hddm_core.diffusion.conversion import ExpertDeclaration
from hddm_core.diffusion.sampling import NonFiniteError, euler_sample, time_grid
from hddm_core.inference import EnsembleExpertHandle, Routing, sample_ensemble

B = 6
FM = ExpertDeclaration("velocity", "linear", "continuous")


def overflowing(x, t, c=None):
    """~1e37 at step 0 (finite in float32); once x has moved by ~1e36 the output overflows to inf."""
    return torch.full_like(x, 1e37) * (1 + x.abs())


def members(mixture):
    return [EnsembleExpertHandle("overflow", FM, overflowing),
            EnsembleExpertHandle("ideal", FM, mixture.expert_network(1, FM))]


def test_overflowing_expert_fails_with_one_line_naming_expert_and_step(mixture):
    with pytest.raises(NonFiniteError) as err:
        sample_ensemble(members(mixture), list(range(B)), (2,), routing=Routing.fixed([1, 1]), steps=10)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("expert 'overflow' returned non-finite converted velocity at step 1 (t=0.9)")
    assert f"in {B} of {B} rows" in msg and "nonfinite='drop'" in msg


def test_drop_policy_drops_the_expert_for_those_rows_and_counts(mixture):
    res = sample_ensemble(members(mixture), list(range(B)), (2,), routing=Routing.fixed([1, 1]), steps=10,
                          nonfinite="drop")
    assert torch.isfinite(res.samples).all()
    assert res.nonfinite[0].tolist() == [0, 0] and res.nonfinite[1:, 0].tolist() == [B] * 9
    assert int(res.nonfinite[:, 1].sum()) == 0
    assert res.summary()["nonfinite_dropped"] == {"overflow": 9 * B, "ideal": 0}
    # a row whose only expert is dropped cannot continue
    with pytest.raises(NonFiniteError, match="no expert with a finite velocity left at step 1"):
        sample_ensemble(members(mixture)[:1], list(range(B)), (2,), routing=Routing.fixed([1]), steps=10,
                        nonfinite="drop")


def test_router_returning_nan_is_caught(mixture):
    ms = [EnsembleExpertHandle(f"e{k}", FM, mixture.expert_network(k, FM)) for k in range(3)]

    def nan_router(x, t_net):
        out = mixture.posterior_router()(x, t_net)
        out[0] = float("nan")  # row 0 only
        return out

    with pytest.raises(NonFiniteError, match=r"^router returned non-finite logits at step 0 \(t=1\) in 1 of 6 rows"):
        sample_ensemble(ms, list(range(B)), (2,), router=nan_router, routing=Routing.full(), steps=4)
    res = sample_ensemble(ms, list(range(B)), (2,), router=nan_router, routing=Routing.full(), steps=4,
                          nonfinite="drop", dtype=torch.float64)
    assert res.router_nonfinite.tolist() == [1, 1, 1, 1] and torch.isfinite(res.samples).all()
    assert res.summary()["router_nonfinite"] == 4
    with pytest.raises(ValueError, match="unknown non-finite policy 'ignore'; valid: \\['fail', 'drop'\\]"):
        sample_ensemble(ms, [0], (2,), router=nan_router, routing=Routing.full(), steps=1, nonfinite="ignore")


def test_integrator_names_the_step_of_a_non_finite_velocity_or_sample():
    def field(x, t, c):
        return torch.full_like(x, float("nan")) if float(t[0]) < 0.6 else x

    with pytest.raises(NonFiniteError, match=r"^non-finite path velocity at step 2 \(s=0.5\) in 3 of 3 rows"):
        euler_sample(field, torch.ones(3, 2), time_grid(4))
    with pytest.raises(NonFiniteError, match=r"^non-finite sample at step 0 \(s=1\) in 1 of 2 rows \(first: \[1\]\)"):
        euler_sample(lambda x, t, c: torch.tensor([[0.0], [3e38]]), torch.tensor([[0.0], [-3e38]]), time_grid(2))
