"""Configs: validated at construction with errors naming the bad value and the valid options;
saved as JSON beside every checkpoint and read back equal."""
import json

import pytest

from hddm_core.storage import ArtifactStore
from hddm_core.training.config import ExpertTrainConfig, RouterTrainConfig
from hddm_core.training.expert_trainer import build_loop
from tests.training.tiny import SeededDataset, factory, tiny_config


@pytest.mark.parametrize("field,value,match", [
    ("objective", "score", r"unknown objective 'score'; valid: \['ddpm-eps', 'flow-matching', 'x0'\]"),
    ("schedule", "sigmoid", r"unknown schedule 'sigmoid'; valid: \['cosine', 'ddpm-linear', 'linear'\]"),
    ("time_input", "ms", "unknown time_input 'ms'"),
    ("precision", "fp16", r"unknown precision 'fp16'; valid: \['bf16', 'fp32'\]"),
    ("device", "tpu", "device must be one of"),
    ("steps", 0, "steps must be a positive integer, got 0"),
    ("batch_size", 2.5, "batch_size must be a positive integer, got 2.5"),
    ("lr", float("nan"), "lr must be a finite number > 0, got nan"),
    ("ema_decay", 1.0, r"ema_decay must be a number in \[0, 1\), got 1.0"),
    ("caption_dropout", -0.1, "caption_dropout must be a number in"),
    ("grad_clip", -1, "grad_clip must be a finite number >= 0"),
    ("spike_factor", 0.5, "spike_factor must be 0 .off. or > 1"),
    ("adam_betas", (0.9,), "adam_betas must be two numbers"),
    ("init", "", "init must be 'scratch' or a path"),
    ("cluster_id", -1, "cluster_id must be an integer >= 0, got -1"),
])
def test_bad_values_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        ExpertTrainConfig(**{field: value})


def test_latent_space_needs_resolution():
    with pytest.raises(ValueError, match="image_resolution is required for latent_space 'sd-vae'"):
        ExpertTrainConfig(latent_space="sd-vae", latent_channels=4)
    assert ExpertTrainConfig(latent_space="sd-vae", latent_channels=4, image_resolution=256).image_resolution == 256


def test_json_round_trip_and_refusals():
    cfg = ExpertTrainConfig(objective="ddpm-eps", schedule="cosine", adam_betas=(0.9, 0.95), precision="bf16")
    again = ExpertTrainConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg and again.adam_betas == (0.9, 0.95)
    with pytest.raises(ValueError, match=r"unknown ExpertTrainConfig fields \['colour'\]"):
        ExpertTrainConfig.from_dict({**cfg.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="cannot be read as RouterTrainConfig"):
        RouterTrainConfig.from_dict(cfg.to_dict())
    with pytest.raises(ValueError, match="num_clusters must be an integer >= 2"):
        RouterTrainConfig(num_clusters=1)
    with pytest.raises(ValueError, match="unknown path 'vp'"):
        RouterTrainConfig(path="vp")


def test_config_saved_beside_every_checkpoint(tmp_path):
    cfg = tiny_config(steps=4)
    loop = build_loop(cfg, SeededDataset(), str(tmp_path / "r"), model_factory=factory)
    loop.run()
    store = ArtifactStore(str(tmp_path / "r"))
    for step in loop.ckpt.complete_steps():
        saved = ExpertTrainConfig.from_dict(store.read_json(f"checkpoints/step-{step:09d}/config.json"))
        assert saved == cfg
    state = store.read_json("checkpoints/step-000000004/state.json")
    assert state["meta"]["declaration"] == {"prediction": "velocity", "schedule": "linear", "time_input": "scaled-1000"}
    assert set(state["meta"]["rng"]) == {"python", "numpy"}  # torch CPU + loop generator live in state.safetensors


def test_dataset_must_match_declared_latents(tmp_path):
    with pytest.raises(ValueError, match=r"latents are \(3, 8, 8\) but the config declares \[C, H, W\] = \[3, 16, 16\]"):
        build_loop(tiny_config(latent_size=16), SeededDataset(), str(tmp_path / "x"), model_factory=factory)
    with pytest.raises(ValueError, match="batch_size 64 exceeds the dataset's 40 samples"):
        build_loop(tiny_config(batch_size=64), SeededDataset(), str(tmp_path / "y"), model_factory=factory)
