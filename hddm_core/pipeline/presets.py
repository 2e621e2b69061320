"""Pipeline presets: named sets of defaults for PipelineParams (the one table of their names).

A preset fills defaults, it does not pin values: `PipelineParams(preset="paper", ...)` takes every
value below for the fields the caller leaves unset (or at the plain default, which is what the
Prefect form sends for a field nobody touched); a field the caller sets to something else wins.

- demo: the one-command demo on the embedded default, sized for 2 CPU cores (`hddmp demo`): the plain
  defaults themselves (PipelineParams(), the Prefect form's Quick run), so it fills nothing.
- paper: HDDM's configuration (Jiang et al., CVPR 2026): K = 8, clusters 0 and 3 DDPM-eps and the
  other six flow matching (the paper's "2 DDPM + 6 FM"), DiT-XL/2 AdaLN-Single experts at 256 px in
  SD-VAE (sd-vae-ft-mse) latents, CLIP ViT-L/14 text with 77 tokens, DINOv2 ViT-L/14 embeddings,
  LLaVA-1.5 recaptioning, 50 Euler steps, CFG 7.5, a DiT-B/2 router. Values the paper does not give
  are taken from DiT (Peebles & Xie 2023) or are ours; PAPER_SOURCES says which, per field, and
  docs/paper-recipe.md explains them.
"""
from __future__ import annotations

import copy
from typing import Any

from hddm_core.diffusion.objectives import DDPM_EPS, FLOW_MATCHING
from hddm_core.models.presets import DIT_B_2, DIT_XL_2

DEMO, PAPER = "demo", "paper"

# The demo's sizes are the plain defaults (PipelineParams(), the form's Quick run): nothing to fill.
_DEMO: dict = {}

_PAPER = {
    "download": {"source": "parquet", "embedded": {"limit": None}, "image_size": 256, "resize_mode": "center_crop", "encode_format": "jpg",
                 "number_sample_per_shard": 10000, "processes_count": 16, "thread_count": 64},
    "recaption": {"captioner": "llava", "llava_model": "llava-hf/llava-1.5-7b-hf", "batch_size": 32},
    "embed": {"embedder": "dinov2", "dinov2_model": "facebook/dinov2-large", "batch_size": 256},
    "cluster": {"n_clusters": 8, "balance": False},
    "prepare": {"latent_space": "sd-vae", "resolution": 256, "vae_model": "stabilityai/sd-vae-ft-mse",
                "text_encoder": "clip", "clip_model": "openai/clip-vit-large-patch14", "max_length": 77,
                "batch_size": 64},
    "objectives": [DDPM_EPS, FLOW_MATCHING, FLOW_MATCHING, DDPM_EPS,
                   FLOW_MATCHING, FLOW_MATCHING, FLOW_MATCHING, FLOW_MATCHING],
    "expert_training": {"architecture": DIT_XL_2, "steps": 400_000, "batch_size": 64, "lr": 1e-4, "warmup_steps": 0,
                        "ema_decay": 0.9999, "checkpoint_interval": 5000, "precision": "bf16"},
    "router": {"training": {"architecture": DIT_B_2, "steps": 100_000, "batch_size": 256, "lr": 1e-4,
                            "ema_decay": 0.9999, "checkpoint_interval": 5000, "precision": "bf16"},
               "eval_samples_per_bucket": 64},
    "evaluate": {"steps": 50, "cfg_scale": 7.5, "n_prompts": 100, "images_per_prompt": 10,
                 "reference_images": 10000, "batch_size": 64},
}

PIPELINE_PRESETS: dict[str, dict] = {DEMO: _DEMO, PAPER: _PAPER}
PIPELINE_PRESET_NAMES = tuple(PIPELINE_PRESETS)

# Where each paper value comes from: "paper" (HDDM), "DiT" / "PixArt-alpha" (what HDDM builds on), or
# "ours" (not given by any of them; chosen for one expert per GPU). docs/paper-recipe.md prints this.
PAPER_SOURCES = {
    "cluster.n_clusters": "paper", "cluster.balance": "ours (plain nearest-centroid assignment)",
    "router.eval_samples_per_bucket": "ours", "objectives": "paper", "expert_training.architecture": "paper",
    "prepare.*": "paper", "embed.dinov2_model": "paper", "recaption.llava_model": "paper",
    "evaluate.steps": "paper", "evaluate.cfg_scale": "paper", "router.training.architecture": "paper",
    "evaluate.n_prompts": "paper (diversity: 10 images for each of 100 prompts)",
    "evaluate.images_per_prompt": "paper", "evaluate.reference_images": "ours (10K, as FID-10K; FID-50K needs 50K)",
    "expert_training.lr": "DiT (constant AdamW 1e-4, no weight decay, no warm-up)",
    "expert_training.ema_decay": "DiT", "expert_training.warmup_steps": "DiT",
    "expert_training.steps": "ours (DiT-XL/2's 400K-step ablation length)",
    "expert_training.batch_size": "ours (one GPU per expert; DiT used 256 over 8 GPUs)",
    "expert_training.precision": "ours", "expert_training.checkpoint_interval": "ours",
    "router.training.steps": "ours", "router.training.batch_size": "ours", "router.training.lr": "DiT",
    "download.*": "ours (LAION parquet through img2dataset, 256 px centre crop as DiT)",
}


def check_preset(name: str) -> str:
    if name not in PIPELINE_PRESETS:
        raise ValueError(f"unknown pipeline preset {name!r}; valid: {list(PIPELINE_PRESET_NAMES)}")
    return name


def _as_raw(value: Any) -> Any:
    """A pydantic model given by the caller counts by the fields it set (exclude_unset)."""
    dump = getattr(value, "model_dump", None)
    return dump(mode="json", exclude_unset=True) if dump is not None else value


def fill_preset(raw: dict, name: str, plain: dict) -> dict:
    """raw with the preset's values where raw leaves a field unset or at its plain default.

    plain: PipelineParams() dumped as JSON (the defaults without a preset)."""
    return _fill(dict(raw), PIPELINE_PRESETS[check_preset(name)], plain)


_MISSING = object()


def _fill(raw: dict, preset: dict, plain: dict) -> dict:
    for key, value in preset.items():
        given = _as_raw(raw.get(key, _MISSING))
        default = plain.get(key, _MISSING)
        if isinstance(value, dict):
            raw[key] = _fill(dict(given) if isinstance(given, dict) else {}, value,
                             default if isinstance(default, dict) else {})
        elif given is _MISSING or given == default:
            raw[key] = copy.deepcopy(value)
    return raw


def preset_values(name: str, plain: dict) -> dict:
    """The full parameter values a preset gives when nothing else is set (for --help and docs)."""
    return _fill(copy.deepcopy(plain), PIPELINE_PRESETS[check_preset(name)], plain)
