"""CLIP score through open_clip: 100 x max(cos(image, text), 0) averaged over images (Hessel et al. 2021,
with w = 100 as in common text-to-image evaluations; the model name and weights are stated).

Which model: `model_name` is an open_clip architecture ("ViT-B-32") with `pretrained` a tag
("laion2b_s34b_b79k") or a local checkpoint file, or `model_name` is "local-dir:/path" (open_clip's own
layout: open_clip_config.json with model_cfg/preprocess_cfg, plus open_clip_model.safetensors), in
which case `pretrained` is ignored. When not given they come from $HDDM_CLIP_MODEL / $HDDM_CLIP_PRETRAINED,
else ViT-B-32 / laion2b_s34b_b79k. Pretrained tags need the Hugging Face hub, which is offline here: a
tag is tried with HF_HUB_OFFLINE=1 (a cached copy works); when no weights are found the score is
"unavailable" with the reason. open_clip is called with require_pretrained, so random-init weights are
never used for a reported score; checkpoints are read tensors-only (weights_only / safetensors).
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from hddm_core.metrics.fid import to_pil_images
from hddm_core.metrics.result import MetricResult

log = logging.getLogger(__name__)
SCALE = 100.0
CLIP_MODEL_ENV, CLIP_PRETRAINED_ENV = "HDDM_CLIP_MODEL", "HDDM_CLIP_PRETRAINED"
DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"


@contextlib.contextmanager
def _offline_hub():
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


@dataclass
class ClipScorer:
    model: torch.nn.Module
    preprocess: object  # PIL image -> [3, S, S]
    tokenizer: object  # list[str] -> token ids
    model_id: str  # e.g. "ViT-B-32 / laion2b_s34b_b79k" or a local path

    @property
    def name(self) -> str:
        return _metric_name(self.model_id)

    @torch.no_grad()
    def scores(self, images, prompts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        pil = to_pil_images(images)
        if len(pil) != len(prompts):
            raise ValueError(f"{len(pil)} images but {len(prompts)} prompts; give one prompt per image")
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(pil), batch_size):
            img = torch.stack([self.preprocess(p) for p in pil[i:i + batch_size]]).to(device)
            txt = self.tokenizer(list(prompts[i:i + batch_size])).to(device)
            fi = self.model.encode_image(img).float()
            ft = self.model.encode_text(txt).float()
            cos = torch.nn.functional.cosine_similarity(fi, ft, dim=-1)
            out.append((SCALE * cos.clamp_min(0)).double().cpu().numpy())
        return np.concatenate(out)

    def __call__(self, images, prompts: Sequence[str]) -> MetricResult:
        s = self.scores(images, prompts)
        return MetricResult(self.name, float(s.mean()), details={"n": int(s.size), "std": float(s.std())})


def clip_settings(model_name: str | None = None, pretrained: str | None = None) -> tuple[str, str]:
    """(model_name, pretrained): the arguments, else the environment, else ViT-B-32 / laion2b_s34b_b79k."""
    model_name = model_name or os.environ.get(CLIP_MODEL_ENV) or DEFAULT_MODEL
    if model_name.startswith("local-dir:"):
        return model_name, ""  # the folder holds the weights
    return model_name, pretrained or os.environ.get(CLIP_PRETRAINED_ENV) or DEFAULT_PRETRAINED


def _metric_name(model_id: str) -> str:
    return f"CLIPScore ({model_id}, 100 x cos clipped at 0)"


def _model_id(model_name: str, pretrained: str) -> str:
    return f"{model_name} / {pretrained}" if pretrained else model_name


def load_clip_scorer(model_name: str | None = None, pretrained: str | None = None, device: str = "cpu"):
    """(ClipScorer, "") with real weights from a local checkpoint, a local-dir model or a cached tag,
    else (None, reason)."""
    model_name, pretrained = clip_settings(model_name, pretrained)
    model_id = _model_id(model_name, pretrained)
    if model_name.startswith("local-dir:"):
        folder = model_name[len("local-dir:"):]
        if not os.path.isfile(os.path.join(folder, "open_clip_config.json")):
            return None, f"CLIP model folder {folder!r} has no open_clip_config.json"
    elif os.path.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors")):
        if not os.path.isfile(pretrained):
            return None, f"CLIP checkpoint {pretrained!r} not found"
    import open_clip  # local import: heavy

    try:
        with _offline_hub():
            model, preprocess = open_clip.create_model_from_pretrained(
                model_name, pretrained=pretrained or None, device=device, weights_only=True)  # require_pretrained
            tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as exc:  # noqa: BLE001 - any loader failure means: no real weights here
        return None, f"open_clip weights {model_id!r} unavailable offline: {type(exc).__name__}: {str(exc)[:200]}"
    return ClipScorer(model.eval(), preprocess, tokenizer, model_id), ""


def clip_score(images, prompts: Sequence[str], scorer: ClipScorer | None = None, model_name: str | None = None,
               pretrained: str | None = None) -> MetricResult:
    if scorer is None:
        scorer, reason = load_clip_scorer(model_name, pretrained)
        if scorer is None:
            return MetricResult.unavailable(clip_name(model_name, pretrained), reason)
    return scorer(images, prompts)


def clip_name(model_name: str | None = None, pretrained: str | None = None) -> str:
    return _metric_name(_model_id(*clip_settings(model_name, pretrained)))
