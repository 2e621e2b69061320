"""Sparse dispatch, guidance batching, lazy placement and compatibility checks of the ensemble sampler."""
import pytest
import torch

from hddm_core.diffusion.conversion import ExpertDeclaration, expert_velocity
from hddm_core.inference import EnsembleExpertHandle, Routing, check_compatible, sample_ensemble
from hddm_core.diffusion.schedules import LinearPath

B, STEPS = 24, 6


def _run(members, mixture, routing, guided=True):
    cond = torch.randn(B, 1, dtype=torch.float64)  # ideal networks ignore it; the counts do not
    return sample_ensemble(members, list(range(B)), (2,), router=mixture.posterior_router(), routing=routing,
                           cond=cond if guided else None, null_cond=torch.zeros(1, 1, dtype=torch.float64),
                           cfg_scale=7.5, steps=STEPS, dtype=torch.float64)


@pytest.mark.parametrize("routing, experts_per_sample", [(Routing.top1(), 1), (Routing.top_k(2), 2), (Routing.full(), 3)])
def test_step_cost_is_router_plus_selected_pairs(mixture, mixed_members, routing, experts_per_sample):
    res = _run(mixed_members, mixture, routing)
    # Counted inside the networks, independently of the sampler's bookkeeping.
    rows = [sum(m.network.calls) for m in mixed_members]
    calls = [len(m.network.calls) for m in mixed_members]
    assert sum(rows) == STEPS * B * experts_per_sample * 2  # x2: cond + uncond rows in the same call
    assert rows == res.counts.expert_rows and calls == res.counts.expert_calls
    assert all(c <= STEPS for c in calls)  # at most one batched call per expert per step
    assert res.counts.router_calls == STEPS and res.counts.router_rows == STEPS * B
    # Usage mass matches the rows actually run for top-1 (one expert per sample).
    if experts_per_sample == 1:
        assert torch.allclose(res.usage.sum(0) * B * 2, torch.tensor(rows, dtype=torch.float64))


def test_unguided_runs_one_row_per_pair(mixture, mixed_members):
    res = _run(mixed_members, mixture, Routing.top1(), guided=False)
    assert sum(res.counts.expert_rows) == STEPS * B


def test_guidance_equals_two_separate_passes():
    """One batched cond+uncond call per expert gives v_u + s (v_c - v_u) of two separate conversions."""
    decl = ExpertDeclaration("eps", "cosine", "continuous")
    net = lambda x, t, c: 0.3 * x + c  # noqa: E731 - a conditional 'network' whose output depends on cond
    cond, null = torch.randn(5, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    grid = torch.tensor([0.8, 0.7], dtype=torch.float64)
    res = sample_ensemble([EnsembleExpertHandle("e", decl, net)], list(range(5)), (2,), routing=Routing.fixed([1]),
                          cond=cond, null_cond=null, cfg_scale=4.0, grid=grid, dtype=torch.float64)
    from hddm_core.diffusion.sampling import per_sample_noise

    x = per_sample_noise(list(range(5)), (2,), dtype=torch.float64) * 0.8
    t = torch.full((5,), 0.8, dtype=torch.float64)
    v_c, _ = expert_velocity(net, x, t, cond, declaration=decl, sampler=LinearPath())
    v_u, _ = expert_velocity(net, x, t, null.expand(5, 2), declaration=decl, sampler=LinearPath())
    expected = x - (v_u + 4.0 * (v_c - v_u)) * 0.1
    assert torch.allclose(res.samples, expected, atol=1e-10)


def test_experts_are_loaded_only_when_first_selected(mixture):
    from tests.inference.conftest import MIXED

    built = []

    def loader(k):
        def build():
            built.append(k)
            return mixture.expert_network(k, MIXED[k])
        return build

    members = [EnsembleExpertHandle(f"e{k}", d, loader=loader(k)) for k, d in enumerate(MIXED)]
    res = sample_ensemble(members, [0, 1], (2,), routing=Routing.threshold(0.5, low=1, high=0), steps=4)
    assert built == [0, 1]  # expert 2 never selected, never built
    assert [e for e in res.pool_events if e[1] == "load"] == [("e0", "load"), ("e1", "load")]


def test_modules_move_to_the_device_on_first_use_and_offload():
    decl = ExpertDeclaration("velocity", "linear", "continuous")

    class Net(torch.nn.Module):
        """Records placements (this machine has one device; 'cuda:0' is only a label here)."""

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.moves = []

        def to(self, device):
            self.moves.append(str(device))
            return self

        def forward(self, x, t, c=None):
            return x

    members = [EnsembleExpertHandle(f"e{k}", decl, Net()) for k in range(2)]
    from hddm_core.inference import ExpertPool

    pool = ExpertPool(members, device="cuda:0", offload=True)
    pool.network(0)
    assert members[0].network.moves == ["cuda:0"] and pool.resident() == ["e0"]
    pool.network(0)  # already placed: no second copy
    pool.release(0)
    assert members[0].network.moves == ["cuda:0", "cpu"] and pool.resident() == []
    assert members[1].network.moves == []  # never selected: never moved
    assert pool.events == [("e0", "to-device"), ("e0", "offload")]


@pytest.mark.parametrize("field", ["latent_space", "text_encoder"])
def test_incompatible_experts_are_refused_naming_the_field(field):
    decl = ExpertDeclaration("velocity", "linear", "continuous")
    a = EnsembleExpertHandle("a", decl, lambda x, t, c: x, latent_space="sd-vae (scale 0.18215)", text_encoder="minilm/384")
    b = EnsembleExpertHandle("b", decl, lambda x, t, c: x, latent_space="sd-vae (scale 0.18215)", text_encoder="minilm/384")
    setattr(b, field, "pixel (scale 1.0)" if field == "latent_space" else "clip-vit-l/768")
    with pytest.raises(ValueError, match=field) as err:
        check_compatible([a, b])
    assert getattr(b, field) in str(err.value) and getattr(a, field) in str(err.value)
    with pytest.raises(ValueError, match=field):
        sample_ensemble([a, b], [0], (2,), routing=Routing.fixed([1, 1]), steps=1)


def test_bad_sampler_inputs_are_refused(mixture, mixed_members):
    with pytest.raises(ValueError, match="needs a router"):
        sample_ensemble(mixed_members, [0], (2,), routing=Routing.top1())
    with pytest.raises(ValueError, match="cond has batch 3"):
        sample_ensemble(mixed_members, [0, 1], (2,), router=mixture.posterior_router(), cond=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="learned null caption"):
        sample_ensemble(mixed_members, [0, 1], (2,), router=mixture.posterior_router(), cond=torch.zeros(2, 1), steps=1)
    with pytest.raises(ValueError, match="unique"):
        check_compatible([mixed_members[0], mixed_members[0]])


def test_ensemble_is_a_velocity_field_for_the_one_integrator(mixture, mixed_members):
    """sample_ensemble = euler_sample(EnsembleVelocityField(...)) on the same noise, bit for bit."""
    from hddm_core.diffusion.safeguards import Safeguards
    from hddm_core.diffusion.sampling import euler_sample, per_sample_noise, time_grid
    from hddm_core.inference import EnsembleVelocityField, ExpertPool

    res = _run(mixed_members, mixture, Routing.top_k(2))
    field = EnsembleVelocityField(ExpertPool(mixed_members), routing=Routing.top_k(2), router=mixture.posterior_router(),
                                  sampler=LinearPath(), guard=Safeguards(), null_cond=torch.zeros(1, 1, dtype=torch.float64),
                                  cfg_scale=7.5)
    cond = torch.randn(B, 1, dtype=torch.float64)
    x = euler_sample(field, per_sample_noise(list(range(B)), (2,), dtype=torch.float64), time_grid(STEPS), cond)
    assert torch.equal(x, res.samples)
    assert torch.equal(torch.stack(field.usage), res.usage) and field.times == res.times.tolist()


def test_native_ddim_step_is_the_ddim_update():
    """Euler in y = x/alpha over lambda = sigma/alpha is DDIM: x' = alpha' x0_hat + sigma' eps_hat."""
    from hddm_core.diffusion.sampling import per_sample_noise
    from hddm_core.diffusion.schedules import DDPMLinearBeta
    from hddm_core.inference.native import native_ddim_sample

    decl = ExpertDeclaration("eps", "ddpm-linear", "continuous")
    net = lambda x, t, c: 0.5 * x + 0.1  # noqa: E731 - any smooth eps 'network'
    x2 = native_ddim_sample(net, decl, [0, 1, 2], (4,), steps=2, dtype=torch.float64)
    s = DDPMLinearBeta()
    c1, ch = s.coefficients(torch.tensor(1.0, dtype=torch.float64)), s.coefficients(torch.tensor(0.5, dtype=torch.float64))
    x = per_sample_noise([0, 1, 2], (4,), dtype=torch.float64) * c1.sigma
    eps = net(x, None, None)
    x = ch.alpha * (x - c1.sigma * eps) / c1.alpha + ch.sigma * eps  # DDIM t = 1 -> 0.5, unguarded
    eps = net(x, None, None)
    assert torch.allclose(x2, (x - ch.sigma * eps) / ch.alpha, atol=1e-10)  # last step returns x0_hat


def test_native_ddim_runs_without_safeguards():
    """An x0 'network' answering 50 (beyond the clamp of 20): the baseline keeps 50, as plain DDIM does."""
    from hddm_core.inference.native import native_ddim_sample

    decl = ExpertDeclaration("x0", "ddpm-linear", "continuous")
    net = lambda x, t, c: torch.full_like(x, 50.0)  # noqa: E731
    x2 = native_ddim_sample(net, decl, [0, 1], (3,), steps=2, dtype=torch.float64)
    assert torch.allclose(x2, torch.full_like(x2, 50.0), atol=1e-9)  # last step returns x0_hat, unclamped
    with pytest.raises(ValueError, match="native DDIM needs alpha\\(t=1\\) >= 0.0001.*'cosine'"):
        native_ddim_sample(net, ExpertDeclaration("x0", "cosine", "continuous"), [0], (3,), steps=2)
