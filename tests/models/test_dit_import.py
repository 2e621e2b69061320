"""ImageNet DiT -> AdaLN-Single expert: what transfers bit-for-bit, what is derived (and how exactly
it reproduces the source), what is dropped or reinitialised, and that the result runs and saves."""
import pickle

import pytest
import torch
from safetensors.torch import save_file

from hddm_core.checkpoints import (convert_dit_checkpoint, convert_dit_state_dict, import_dit_expert,
                                   inspect_dit_state_dict, load_dit_state_dict, load_expert,
                                   velocity_expert_from_loaded)
from hddm_core.models import build_expert_model
from hddm_core.diffusion.objectives import get_objective

from .reference_dit import ReferenceDiT

DEPTH, HIDDEN, HEADS, C, P, SIZE, CLASSES, TEXT = 3, 64, 4, 4, 2, 8, 10, 32
T_STAR = 500


def make_source(seed=0, shared_adaln=False):
    torch.manual_seed(seed)
    ref = ReferenceDiT(input_size=SIZE, patch_size=P, in_channels=C, hidden_size=HIDDEN, depth=DEPTH, num_heads=HEADS,
                       num_classes=CLASSES).randomize(torch.Generator().manual_seed(seed + 1))
    if shared_adaln:  # every block uses the same adaLN weight (biases still differ)
        with torch.no_grad():
            for block in ref.blocks[1:]:
                block.adaLN_modulation[1].weight.copy_(ref.blocks[0].adaLN_modulation[1].weight)
    return ref.eval()


def convert(ref, **kw):
    kw = {"text_dim": TEXT, "num_heads": HEADS, "t_star": T_STAR, **kw}
    return convert_dit_state_dict(ref.state_dict(), **kw)


def null_labels(batch):
    return torch.full((batch,), CLASSES, dtype=torch.long)


def test_source_has_the_public_layout():
    sd = make_source().state_dict()
    assert "y_embedder.embedding_table.weight" in sd and sd["y_embedder.embedding_table.weight"].shape == (CLASSES + 1, HIDDEN)
    assert sd["blocks.2.adaLN_modulation.1.weight"].shape == (6 * HIDDEN, HIDDEN)
    assert sd["final_layer.linear.weight"].shape == (P * P * 2 * C, HIDDEN)  # eps + learned sigma
    info = inspect_dit_state_dict(sd)
    assert (info.depth, info.hidden_size, info.in_channels, info.input_size, info.learn_sigma) == (DEPTH, HIDDEN, C, SIZE, True)


def test_exactly_these_tensors_transfer_bit_for_bit():
    ref = make_source()
    src = ref.state_dict()
    result = convert(ref)
    out = result.model.state_dict()
    expected = {"x_embedder.proj.weight", "x_embedder.proj.bias", "pos_embed", "t_embedder.mlp.0.weight",
                "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight"}
    expected |= {f"blocks.{i}.{part}.{w}" for i in range(DEPTH) for part in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
                 for w in ("weight", "bias")}
    assert set(result.report.transferred) == expected
    for target, source in result.report.transferred.items():
        assert target == source and torch.equal(out[target], src[source]), target
    # null fold: the one time-embedder tensor that changes, by exactly the null-class row
    assert torch.equal(out["t_embedder.mlp.2.bias"],
                       src["t_embedder.mlp.2.bias"] + src["y_embedder.embedding_table.weight"][CLASSES])
    assert not any(k.startswith("y_embedder") for k in out)
    assert "y_embedder.embedding_table.weight" in result.report.dropped
    assert all(f"blocks.{i}.adaLN_modulation.1.weight" in result.report.dropped for i in range(DEPTH))


def test_without_null_fold_the_time_embedder_is_untouched():
    ref = make_source()
    result = convert(ref, fold_null_class=False)
    assert torch.equal(result.model.state_dict()["t_embedder.mlp.2.bias"], ref.state_dict()["t_embedder.mlp.2.bias"])
    assert result.report.transferred["t_embedder.mlp.2.bias"] == "t_embedder.mlp.2.bias"


def test_new_parts_are_a_fresh_init_and_the_head_is_zero():
    ref = make_source()
    result = convert(ref, seed=7)
    out = result.model.state_dict()
    torch.manual_seed(7)
    fresh = build_expert_model(result.model.config).state_dict()
    new_parts = {k for k in out if k.startswith(("caption_projection.", "null_caption")) or ".cross_attn." in k}
    assert set(result.report.reinitialised) == new_parts | {"final_layer.linear.weight", "final_layer.linear.bias"}
    for k in new_parts:
        assert torch.equal(out[k], fresh[k]), k
    assert all(torch.count_nonzero(out[f"blocks.{i}.cross_attn.proj.weight"]) == 0 for i in range(DEPTH))
    assert torch.count_nonzero(out["final_layer.linear.weight"]) == 0  # reinitialised: DiT's zero head
    assert out["final_layer.linear.weight"].shape == (P * P * C, HIDDEN)  # learned-sigma channels gone
    x = torch.randn(2, C, SIZE, SIZE)
    y = result.model(x, torch.tensor([10.0, 900.0]), torch.randn(2, 5, TEXT))
    assert y.shape == x.shape and torch.count_nonzero(y) == 0


def test_at_t_star_the_converted_eps_expert_is_the_unconditional_dit():
    """Null fold + tables exact at t* + zero cross-attention => identical eps output (fp32 rounding)."""
    ref = make_source()
    model = convert(ref, keep_eps_head=True).model.eval()
    x = torch.randn(3, C, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    t = torch.full((3,), float(T_STAR))
    with torch.no_grad():
        want = ref(x, t, null_labels(3))[:, :C]  # eps channels of the class-free DiT
        got = model(x, t, {"tokens": torch.randn(3, 6, TEXT), "mask": torch.ones(3, 6, dtype=torch.bool)})
        assert want.abs().max() > 0.1  # not a vacuous comparison
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
        other = model(x, torch.full((3,), 100.0), None)
        assert (other - ref(x, torch.full((3,), 100.0), null_labels(3))[:, :C]).abs().max() > 1e-3  # away from t*


def _modulations(model, ref, t):
    with torch.no_grad():
        t_emb = model.t_embedder(t)
        s = model.t_block(t_emb).reshape(len(t), 6, HIDDEN)
        ours = torch.stack([b.scale_shift_table[None] + s for b in model.blocks])  # [depth, B, 6, D]
        c = ref.cond(t, null_labels(len(t)))
        theirs = torch.stack([b.modulation(c).reshape(len(t), 6, HIDDEN) for b in ref.blocks])
    return ours, theirs


def test_block_tables_exact_at_t_star_and_block_mean_exact_everywhere():
    ref = make_source()
    model = convert(ref).model
    ours, theirs = _modulations(model, ref, torch.tensor([float(T_STAR)]))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    t = torch.tensor([0.0, 37.0, 250.0, 999.0])
    ours, theirs = _modulations(model, ref, t)
    torch.testing.assert_close(ours.mean(0), theirs.mean(0), atol=1e-5, rtol=1e-5)
    assert (ours - theirs).abs().max() > 1e-3  # individual blocks only approximate away from t*


def test_exact_for_every_t_when_blocks_share_the_adaln_weight():
    ref = make_source(shared_adaln=True)
    model = convert(ref).model.eval()
    captured = {}
    model.final_layer.register_forward_pre_hook(lambda mod, args: captured.update(h=args[0]))
    x = torch.randn(2, C, SIZE, SIZE)
    for step in (0.0, 123.0, 999.0):
        t = torch.full((2,), step)
        with torch.no_grad():
            model(x, t, torch.randn(2, 4, TEXT))
            want, _ = ref.features(x, t, null_labels(2))
        torch.testing.assert_close(captured["h"], want, atol=2e-5, rtol=1e-4)


def test_converted_network_trains_one_step():
    model = convert(make_source()).model.train()
    loss = get_objective("flow-matching", time_input="discrete-999")(
        model, torch.randn(2, C, SIZE, SIZE), {"tokens": torch.randn(2, 3, TEXT), "mask": torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()},
        generator=torch.Generator().manual_seed(0)).loss
    loss.backward()
    assert torch.isfinite(loss) and model.final_layer.linear.weight.grad.abs().sum() > 0


def test_reads_safetensors_and_trusted_pt(tmp_path):
    sd = make_source().state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "dit.safetensors"))
    torch.save(sd, tmp_path / "dit.pt")
    torch.save({"ema": sd, "opt": {}}, tmp_path / "train.pt")  # DiT training checkpoints nest the EMA
    for name in ("dit.safetensors", "dit.pt", "train.pt"):
        loaded = load_dit_state_dict(str(tmp_path / name))
        assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    a = convert_dit_checkpoint(str(tmp_path / "dit.pt"), text_dim=TEXT, num_heads=HEADS).model.state_dict()
    b = convert_dit_checkpoint(str(tmp_path / "dit.safetensors"), text_dim=TEXT, num_heads=HEADS).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Payload:
    def __reduce__(self):  # would run code if unpickled without weights_only
        return (exec, ("raise SystemExit('unpickled!')",))


def test_pt_with_code_is_refused_by_weights_only(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"x": _Payload()}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_dit_state_dict(str(tmp_path / "evil.pt"))


def test_import_saves_a_discrete_999_expert(tmp_path):
    sd = make_source().state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "dit.safetensors"))
    uri, report = import_dit_expert(str(tmp_path / "dit.safetensors"), str(tmp_path / "store"), "experts/dit-eps",
                                    objective="ddpm-eps", text_dim=TEXT, text_encoder="test-encoder",
                                    keep_eps_head=True, num_heads=HEADS)
    loaded = load_expert(uri)
    m = loaded.manifest
    assert (m.objective, m.prediction, m.schedule, m.time_input) == ("ddpm-eps", "eps", "ddpm-linear", "discrete-999")
    assert (m.latent_space, m.latent_scale, m.image_resolution, m.text_dim) == ("sd-vae", 0.18215, SIZE * 8, TEXT)
    assert m.extra["keep_eps_head"] and m.extra["transferred"] == len(report.transferred)
    v = velocity_expert_from_loaded(loaded)(torch.randn(2, C, SIZE, SIZE), torch.tensor([0.2, 0.7]))
    assert v.shape == (2, C, SIZE, SIZE) and torch.isfinite(v).all()
    with pytest.raises(ValueError, match="keep_eps_head"):
        import_dit_expert(str(tmp_path / "dit.safetensors"), str(tmp_path / "store"), "experts/x",
                          objective="flow-matching", text_dim=TEXT, text_encoder="t", keep_eps_head=True, num_heads=HEADS)


def test_bad_sources_are_named():
    sd = make_source().state_dict()
    with pytest.raises(ValueError, match="missing"):
        convert_dit_state_dict({k: v for k, v in sd.items() if "blocks.1.mlp.fc1" not in k}, text_dim=TEXT, num_heads=HEADS)
    with pytest.raises(ValueError, match="unexpected"):
        convert_dit_state_dict({**sd, "extra.weight": torch.zeros(1)}, text_dim=TEXT, num_heads=HEADS)
    with pytest.raises(ValueError, match="num_heads"):
        convert_dit_state_dict(sd, text_dim=TEXT)  # hidden 64 matches no preset
    with pytest.raises(ValueError, match="t_star"):
        convert_dit_state_dict(sd, text_dim=TEXT, num_heads=HEADS, t_star=1000)
