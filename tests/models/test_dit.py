"""The expert network and the router: the call contract, text conditioning and masks, the null
caption, configs, FLOPs, bf16 autocast and a full-graph torch.compile trace."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hddm_core.diffusion.conversion import ExpertDeclaration, ExpertVelocityField
from hddm_core.models import (PRESET_NAMES, DiTConfig, RouterConfig, build_expert_model, build_router, expert_config,
                              flops_per_forward, router_config)
from hddm_core.diffusion.objectives import get_objective

from .conftest import randomize

B, C, S, TEXT = 2, 3, 16, 384


def inputs(seed=0, length=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, C, S, S, generator=g), torch.tensor([3.0, 700.0]),
            torch.randn(B, length, TEXT, generator=g))


def test_output_shape_and_both_cond_forms(tiny16):
    x, t, tokens = inputs()
    with torch.no_grad():
        y = tiny16(x, t, tokens)
        assert y.shape == x.shape and torch.isfinite(y).all()
        full_mask = {"tokens": tokens, "mask": torch.ones(B, tokens.shape[1], dtype=torch.bool)}
        torch.testing.assert_close(tiny16(x, t, full_mask), y)
        torch.testing.assert_close(tiny16(x, t, {"tokens": tokens}), y)
        assert (tiny16(x, t, torch.randn_like(tokens)) - y).abs().max() > 1e-4  # text matters


def test_masked_tokens_are_ignored(tiny16):
    x, t, tokens = inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    changed = tokens.clone()
    changed[~mask] = torch.randn_like(changed[~mask]) * 10
    with torch.no_grad():
        a = tiny16(x, t, {"tokens": tokens, "mask": mask})
        b = tiny16(x, t, {"tokens": changed, "mask": mask})
        c = tiny16(x[:1], t[:1], {"tokens": tokens[:1, :3], "mask": None})  # sample 0 without its padding
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a[:1], c, atol=1e-5, rtol=1e-5)
        empty = tiny16(x, t, {"tokens": tokens, "mask": torch.zeros(B, 5, dtype=torch.bool)})
        torch.testing.assert_close(empty, tiny16(x, t, tokens))  # all-padding rows attend everywhere
        int_mask = tiny16(x, t, {"tokens": tokens, "mask": mask.long()})  # HF tokenizers give int masks
        torch.testing.assert_close(int_mask, a)


def test_null_caption_is_learned_length_independent_and_the_default(tiny16):
    x, t, _ = inputs()
    with torch.no_grad():
        one = tiny16(x, t, tiny16.null_cond(B))
        torch.testing.assert_close(tiny16(x, t, tiny16.null_cond(B, length=9)), one, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tiny16(x, t, None), one)
    assert tiny16.null_caption.requires_grad and "null_caption" in tiny16.state_dict()


def test_drop_captions_substitutes_per_sample_and_trains_the_null(tiny16):
    x, t, tokens = inputs()
    drop = torch.tensor([True, False])
    dropped = tiny16.drop_captions(tokens, drop)
    assert torch.equal(dropped[1], tokens[1])
    assert torch.equal(dropped[0], tiny16.null_caption.detach().expand(5, TEXT))
    mask = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    as_dict = tiny16.drop_captions({"tokens": tokens, "mask": mask}, drop)
    assert as_dict["mask"][0].all() and torch.equal(as_dict["mask"][1], mask[1])
    with torch.no_grad():
        torch.testing.assert_close(tiny16(x, t, as_dict)[0], tiny16(x, t, None)[0], atol=1e-5, rtol=1e-5)
    tiny16(x, t, dropped).square().mean().backward()
    assert tiny16.null_caption.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="drop has 3 entries"):
        tiny16.drop_captions(tokens, torch.tensor([True, False, True]))


def test_scalar_time_broadcasts(tiny16):
    x, _, tokens = inputs()
    with torch.no_grad():
        torch.testing.assert_close(tiny16(x, torch.tensor(250.0), tokens), tiny16(x, torch.full((B,), 250.0), tokens))


@pytest.mark.parametrize("bad, match", [
    (dict(x=torch.randn(B, 4, S, S)), r"x must be \[B, 3, 16, 16\]"),
    (dict(x=torch.randn(B, C, 8, 8)), r"x must be"),
    (dict(t=torch.zeros(3)), r"t_net must be \[B\]"),
    (dict(cond=torch.randn(B, 5, 77)), r"text tokens must be \[B, L, 384\]"),
    (dict(cond={"mask": torch.ones(B, 5)}), r"'tokens'"),
    (dict(cond={"tokens": torch.randn(B, 5, TEXT), "mask": torch.ones(B, 4)}), r"text mask must be"),
    (dict(cond=torch.randn(3, 5, TEXT)), r"cond has batch 3"),
])
def test_bad_inputs_are_named(tiny16, bad, match):
    x, t, tokens = inputs()
    args = {"x": x, "t": t, "cond": tokens, **bad}
    with pytest.raises(ValueError, match=match):
        tiny16(args["x"], args["t"], args["cond"])


def test_objectives_and_conversion_call_it_unchanged(tiny16):
    x, _, tokens = inputs()
    tiny16.train()
    for name in ("ddpm-eps", "flow-matching", "x0"):
        out = get_objective(name)(tiny16, x, tokens, generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(out.loss)
        out.loss.backward()
    assert all(p.grad is not None for n, p in tiny16.named_parameters() if n != "null_caption")
    v = ExpertVelocityField(tiny16.eval(), ExpertDeclaration("eps", "ddpm-linear", "discrete-999"))
    with torch.no_grad():
        assert torch.isfinite(v(x, torch.tensor([0.05, 0.95]), tokens)).all()


def test_fresh_expert_is_deterministic_per_seed_and_starts_at_zero():
    cfg = expert_config("tiny-16")
    torch.manual_seed(5)
    a = build_expert_model(cfg)
    torch.manual_seed(5)
    b = build_expert_model(cfg)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    x, t, tokens = inputs()
    assert torch.count_nonzero(a(x, t, tokens)) == 0  # zero final projection (DiT init)


def test_latent_preset_runs_with_four_channels():
    cfg = expert_config("S/2", depth=1, input_size=8, text_dim=32)
    model = randomize(build_expert_model(cfg))
    x = torch.randn(2, 4, 8, 8)
    assert model(x, torch.tensor([1.0, 2.0]), torch.randn(2, 3, 32)).shape == x.shape


def test_bf16_autocast_close_to_fp32(tiny16):
    x, t, tokens = inputs()
    with torch.no_grad():
        ref = tiny16(x, t, tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny16(x, t, {"tokens": tokens, "mask": torch.ones(B, 5, dtype=torch.bool)})
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).norm() / ref.norm() < 0.05


@pytest.mark.slow  # over 10 s
def test_full_graph_trace_without_breaks(tiny16):
    """fullgraph=True fails on any graph break (data-dependent Python control flow)."""
    x, t, tokens = inputs()
    cond = {"tokens": tokens, "mask": torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)}
    compiled = torch.compile(tiny16, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, cond), tiny16(x, t, cond))
    router = randomize(build_router(router_config("tiny-16", 3)))
    compiled_router = torch.compile(router, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled_router(x, t), router(x, t))
    torch._dynamo.reset()


def test_flops_formula_matches_torch_counter():
    cfg = expert_config("tiny-16")
    model = build_expert_model(cfg)
    x, t, tokens = inputs(length=7)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, tokens)
    # torch's counter does not see CPU scaled_dot_product_attention: add QK^T and AV by hand
    n, d = cfg.num_patches, cfg.hidden_size
    attention = B * cfg.depth * (4 * n * n * d + 4 * n * 7 * d)
    counted = counter.get_total_flops() + attention
    assert abs(flops_per_forward(cfg, batch=B, text_len=7) - counted) / counted < 0.02


# -- router ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("pool, adaln", [("mean", "per-block"), ("cls", "per-block"), ("mean", "single")])
def test_router_logits_depend_on_x_and_t(pool, adaln):
    router = build_router(router_config("tiny-16", 5, pool=pool, adaln=adaln))
    x, t, _ = inputs()
    logits = router(x, t)
    assert logits.shape == (B, 5) and torch.count_nonzero(logits) == 0  # zero head: uniform routing
    randomize(router)
    with torch.no_grad():
        a = router(x, t)
        assert (router(x, t.flip(0)) - a).abs().max() > 1e-4
        assert (router(x * 2, t) - a).abs().max() > 1e-4
    torch.nn.functional.cross_entropy(router(x, t), torch.tensor([0, 4])).backward()
    assert all(p.grad is not None for p in router.parameters())


def test_router_rejects_bad_inputs():
    router = build_router(router_config("tiny-16", 2))
    with pytest.raises(ValueError, match="x must be"):
        router(torch.randn(1, 4, S, S), torch.zeros(1))
    with pytest.raises(ValueError, match="t_net must be"):
        router(torch.randn(2, C, S, S), torch.zeros(3))


# -- configs ----------------------------------------------------------------------------------------
def test_configs_round_trip_through_json():
    for name in PRESET_NAMES:
        cfg = expert_config(name)
        assert DiTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        rcfg = router_config(name, 4)
        assert RouterConfig.from_dict(json.loads(json.dumps(rcfg.to_dict()))) == rcfg
    with pytest.raises(Exception):
        expert_config("tiny").hidden_size = 3  # frozen


@pytest.mark.parametrize("build, match", [
    (lambda: expert_config("XL/3"), "unknown architecture preset 'XL/3'"),
    (lambda: expert_config("tiny", hidden_size=130), "not divisible by num_heads"),
    (lambda: expert_config("tiny", input_size=33), "not divisible by patch_size"),
    (lambda: expert_config("tiny", adaln="zero"), "adaln 'zero'"),
    (lambda: expert_config("tiny", text_dim=0), "text_dim"),
    (lambda: router_config("tiny", 0), "num_clusters"),
    (lambda: router_config("tiny", 3, pool="max"), "pool 'max'"),
    (lambda: DiTConfig.from_dict({"hidden": 3}), "unknown DiTConfig fields"),
])
def test_bad_configs_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()
