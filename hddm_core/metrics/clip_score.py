"""CLIP score through open_clip: 100 x max(cos(image, text), 0) averaged over images (Hessel et al. 2021,
with w = 100 as in common text-to-image evaluations; the model name and weights are stated).

Pretrained tags need the Hugging Face hub, which is offline here: a tag is tried with
HF_HUB_OFFLINE=1 (a cached copy works), a local checkpoint path can be given instead, and when
neither is present the score is "unavailable" with the reason. Random-init weights are never used
for a reported score.
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
        return f"CLIPScore ({self.model_id}, 100 x cos clipped at 0)"

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


def load_clip_scorer(model_name: str = "ViT-B-32", pretrained: str = "laion2b_s34b_b79k", device: str = "cpu"):
    """(ClipScorer, "") with real weights from a local checkpoint path or a cached tag, else (None, reason)."""
    import open_clip  # local import: heavy

    if os.path.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors")):
        if not os.path.isfile(pretrained):
            return None, f"CLIP checkpoint {pretrained!r} not found"
        model_id = f"{model_name} / {pretrained}"
    else:
        model_id = f"{model_name} / {pretrained}"
    try:
        with _offline_hub():
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    except Exception as exc:  # noqa: BLE001 - any loader failure means: no real weights here
        return None, f"open_clip weights {model_id!r} unavailable offline: {type(exc).__name__}: {str(exc)[:200]}"
    return ClipScorer(model.eval(), preprocess, open_clip.get_tokenizer(model_name), model_id), ""


def clip_score(images, prompts: Sequence[str], scorer: ClipScorer | None = None, model_name: str = "ViT-B-32",
               pretrained: str = "laion2b_s34b_b79k") -> MetricResult:
    if scorer is None:
        scorer, reason = load_clip_scorer(model_name, pretrained)
        if scorer is None:
            return MetricResult.unavailable(f"CLIPScore ({model_name} / {pretrained}, 100 x cos clipped at 0)", reason)
    return scorer(images, prompts)
