"""Proof on CPU: the paper preset's STRUCTURE end to end, on tiny random-weight models of the same
classes (AutoencoderKL, CLIPTextModel, Dinov2Model, LLaVA) built from configs and saved as local
folders: download -> LLaVA recaption -> DINOv2 embed -> cluster -> prepare in SD-VAE latents with
CLIP tokens (77) -> K = 8 experts (clusters 0 and 3 DDPM, one flow-matching expert initialised from a
converted tiny DiT checkpoint, one DDPM expert on a cosine schedule) -> router -> evaluate with decoded
images and the projected distance -> `hddmp sample` of the latent experts. Sizes, steps and devices are
overridden; everything else is the paper preset."""
from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from hddm_core.checkpoints.dit_import import DIT_TIME_INPUT
from hddm_core.diffusion.objectives import DDPM_EPS, FLOW_MATCHING
from hddm_core.models.presets import TINY_16
from hddm_core.pipeline.params import PipelineParams
from hddm_core.pipeline.presets import PAPER
from tests.data.fixtures_b import tiny_clip_text, tiny_dinov2, tiny_llava, tiny_vae

pytestmark = pytest.mark.slow


def tiny_models(folder) -> dict:
    out = {k: str(folder / k) for k in ("llava", "dinov2", "clip", "vae")}
    for key, (model, proc) in {"llava": tiny_llava(), "dinov2": tiny_dinov2(), "clip": tiny_clip_text()}.items():
        model.save_pretrained(out[key])
        proc.save_pretrained(out[key])
    tiny_vae().save_pretrained(out["vae"])
    from tests.models.reference_dit import ReferenceDiT  # the public DiT key layout, tiny-16 widths, 4 x 8 x 8 latents

    torch.manual_seed(0)
    ref = ReferenceDiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=2,
                       num_classes=10).randomize(torch.Generator().manual_seed(1))
    out["dit"] = str(folder / "DiT-tiny.pt")
    torch.save(ref.state_dict(), out["dit"])
    return out


def test_paper_structure_end_to_end(tmp_path, capsys):
    from hddm_cli.main import main
    from hddm_core.pipeline.run import run_pipeline

    torch.set_num_threads(1)
    m = tiny_models(tmp_path / "models")
    root = str(tmp_path / "run")
    training = {"architecture": TINY_16, "steps": 4, "batch_size": 8, "checkpoint_interval": 4, "device": "cpu",
                "precision": "fp32"}
    params = PipelineParams.from_preset(
        PAPER, artifact_root=root,
        download={"source": "embedded", "embedded": {"size": 24, "limit": 64}, "image_size": 24,
                  "encode_format": "png", "number_sample_per_shard": 64, "processes_count": 1, "thread_count": 4},
        recaption={"llava_model": m["llava"], "max_new_tokens": 3, "batch_size": 16, "device": "cpu"},
        embed={"dinov2_model": m["dinov2"], "batch_size": 32, "device": "cpu"},
        cluster={"balance": True, "n_iter": 5},
        prepare={"vae_model": m["vae"], "clip_model": m["clip"], "resolution": 16, "batch_size": 32, "device": "cpu"},
        expert_training=training, router={"training": dict(training, steps=6, batch_size=16)},
        expert_overrides=[{"cluster_id": 1, "init": m["dit"]}, {"cluster_id": 3, "schedule": "cosine"}],
        evaluate={"n_prompts": 2, "images_per_prompt": 2, "reference_images": 8, "fd_dims": 2, "steps": 3,
                  "batch_size": 3, "expert_grid_images": 2, "device": "cpu"})
    assert (params.cluster.n_clusters, params.prepare.latent_space, params.prepare.max_length) == (8, "sd-vae", 77)
    result = run_pipeline(params)

    experts = [json.load(open(os.path.join(u.removeprefix("file://"), "expert.json"))) for u in result["experts"]]
    assert [e["objective"] for e in experts] == [DDPM_EPS, FLOW_MATCHING, FLOW_MATCHING, DDPM_EPS] + [FLOW_MATCHING] * 4
    assert {(e["latent_space"], e["text_dim"], e["config"]["in_channels"], e["config"]["input_size"])
            for e in experts} == {("sd-vae", 16, 4, 8)}
    dit, cosine = experts[1], experts[3]
    assert dit["time_input"] == DIT_TIME_INPUT and dit["prediction"] == "velocity"
    init = dit["extra"]["training"]["config"]["init"]
    init_manifest = json.load(open(os.path.join(init.removeprefix("file://"), "expert.json")))
    assert init_manifest["extra"]["converted_from"] == "DiT-tiny.pt" and init_manifest["extra"]["transferred"] > 0
    assert (cosine["schedule"], cosine["prediction"]) == ("cosine", "eps")
    assert experts[0]["schedule"] != "cosine" and experts[2]["time_input"] != DIT_TIME_INPUT

    report = result["report"].removeprefix("file://")
    out = os.path.dirname(report)
    metrics = result["metrics"]
    assert set(metrics) >= {"top-1", "top-2", "full"} and all(
        v["FD-inception-proj2"] is not None and v["FD-inception-proj2"] >= 0 for v in metrics.values())
    grids = sorted(os.listdir(os.path.join(out, "grids")))
    assert sum(g.startswith("expert_") for g in grids) == 8  # one grid per expert, decoded
    text = open(report).read()
    assert "decoded to pixels" in text and "sd-vae" in text

    png = str(tmp_path / "samples.png")
    assert main(["sample", "--artifact-root", root, "--router", result["router"].removeprefix("file://"),
                 "--experts", *[u.removeprefix("file://") for u in result["experts"]],
                 "--prompts", "a red circle", "--images-per-prompt", "2", "--steps", "3", "--batch-size", "1",
                 "--device", "cpu", "--out", png]) == 0
    assert "sd-vae decoded" in capsys.readouterr().out
    with Image.open(png) as im:
        assert im.width >= 2 * 16  # two decoded 16 px images side by side
