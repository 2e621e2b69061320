"""Latents back to pixels (the run's VAE, its scale, in batches), batched sampling, gradient
checkpointing, and the DiT import command."""
from __future__ import annotations

import json
import os

import pytest
import torch

from hddm_core.data.latents import PixelSpace, SDVaeLatents, latent_decoder
from tests.data.fixtures_b import tiny_vae


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("vae") / "vae")
    tiny_vae(seed=3).save_pretrained(path)
    return path


def _latent(vae_folder, scale=0.5):
    return {"space": "sd-vae", "model": vae_folder, "scale": scale, "resolution": 16, "latent_shape": [4, 8, 8]}


def test_sd_vae_decode_is_the_vae_of_latents_over_scale_in_batches(vae_folder):
    dec = latent_decoder(_latent(vae_folder), device="cpu")
    z = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        direct = dec.vae.decode(z / 0.5).sample.clamp(-1, 1)  # AutoencoderKL.decode(z / scale)
    assert torch.allclose(dec.decode(z, batch_size=2), direct, atol=1e-5)
    assert dec.decode(z, batch_size=2).shape == (5, 3, 16, 16)


def test_pixel_space_decodes_to_itself_clamped():
    dec = latent_decoder({"space": "pixel", "model": None, "scale": 1.0, "resolution": 4, "latent_shape": [3, 4, 4]})
    x = torch.linspace(-2, 2, 48).reshape(1, 3, 4, 4)
    assert isinstance(dec, PixelSpace) and torch.equal(dec.decode(x), x.clamp(-1, 1))


def test_a_vae_that_cannot_be_loaded_is_one_line_naming_field_and_path(tmp_path):
    missing = str(tmp_path / "no-vae-here")
    with pytest.raises(ValueError) as exc:
        latent_decoder(_latent(missing), field="prepare/_manifest.json config.latent.model")
    text = str(exc.value)
    assert "\n" not in text and "prepare/_manifest.json config.latent.model" in text and missing in text


def test_a_different_vae_is_refused(vae_folder):
    wrong = dict(_latent(vae_folder), latent_shape=[4, 4, 4])
    with pytest.raises(ValueError, match=r"gives latents \[4, 8, 8\]"):
        latent_decoder(wrong)


def test_decode_checks_the_latent_shape(vae_folder):
    dec = SDVaeLatents.from_pretrained(vae_folder, resolution=16, device="cpu")
    with pytest.raises(ValueError, match=r"latents must be \[N, 4, 8, 8\]"):
        dec.decode(torch.zeros(2, 3, 8, 8))


def test_batched_sampling_equals_one_call(mixed_members):
    """Per-seed noise: splitting the seeds into batches changes no sample; usage is the batch-weighted mean."""
    from hddm_core.inference.ensemble_sampler import sample_ensemble
    from hddm_core.inference.routing import Routing
    from hddm_core.pipeline.batched_sampling import sample_in_batches

    routing = Routing.fixed([0.5, 0.25, 0.25][:len(mixed_members)])
    one = sample_ensemble(mixed_members, list(range(7)), (2,), routing=routing, steps=6, dtype=torch.float64)
    many = sample_in_batches(mixed_members, list(range(7)), (2,), cond=None, batch_size=3, routing=routing, steps=6,
                             dtype=torch.float64, progress=False)
    assert torch.allclose(many.samples.double(), one.samples, atol=1e-6)
    assert torch.allclose(many.usage, one.usage) and many.seeds == list(range(7))
    assert sum(many.counts.expert_rows) == sum(one.counts.expert_rows)


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    import torch.utils.checkpoint as tuc

    from hddm_core.models.dit import build_expert_model
    from hddm_core.models.presets import TINY_16, expert_config

    torch.manual_seed(0)
    model = build_expert_model(expert_config(TINY_16, text_dim=8)).train()
    for p in model.parameters():  # leave DiT's zero init so every parameter gets a gradient
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([10.0, 500.0, 990.0])
    cond = {"tokens": torch.randn(3, 5, 8), "mask": torch.ones(3, 5, dtype=torch.bool)}

    def grads(checkpointing: bool):
        model.zero_grad()
        model.gradient_checkpointing = checkpointing
        model(x, t, cond).pow(2).mean().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    calls = []
    real = tuc.checkpoint
    monkeypatch.setattr(tuc, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = grads(False)
    assert calls == []
    ckpt = grads(True)
    assert len(calls) == model.config.depth  # every block recomputed in backward
    assert plain.keys() == ckpt.keys() and len(plain) > 20
    assert all(torch.allclose(plain[k], ckpt[k], atol=1e-6, rtol=1e-5) for k in plain)
    assert any(plain[k].abs().sum() > 0 for k in plain if k.startswith("blocks."))


def test_import_dit_command_writes_a_discrete_999_expert(tmp_path, capsys):
    from hddm_cli.main import main
    from tests.models.reference_dit import ReferenceDiT

    torch.manual_seed(0)
    ref = ReferenceDiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=2,
                       num_classes=10).randomize(torch.Generator().manual_seed(1))
    torch.save(ref.state_dict(), tmp_path / "dit.pt")
    out = tmp_path / "dit-init"
    assert main(["expert", "import-dit", str(tmp_path / "dit.pt"), "--out", str(out), "--objective", "ddpm-eps",
                 "--text-dim", "16", "--num-heads", "2"]) == 0
    manifest = json.loads((out / "expert.json").read_text())
    assert (manifest["time_input"], manifest["prediction"], manifest["text_dim"]) == ("discrete-999", "eps", 16)
    assert manifest["extra"]["keep_eps_head"] is True and os.path.basename(manifest["extra"]["converted_from"]) == "dit.pt"
    assert "--init" in capsys.readouterr().out
    assert main(["expert", "inspect", str(out)]) == 0
