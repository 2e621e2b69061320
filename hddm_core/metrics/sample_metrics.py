"""The metrics an evaluation computes from samples and their prompts alone, per variant: LPIPS
intra-prompt diversity (real AlexNet weights, or "unavailable" with the reason) beside the named
pixel-RMS substitute, and CLIP score (real open_clip weights, or "unavailable" with the reason).

The LPIPS and CLIP models are loaded once and reused for every variant of an evaluation.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

from hddm_core.metrics.clip_score import clip_name, load_clip_scorer
from hddm_core.metrics.lpips_diversity import LPIPS_NAME, load_lpips, lpips_diversity, pixel_diversity
from hddm_core.metrics.result import MetricResult

log = logging.getLogger(__name__)
PIXEL_NAME = "pixel-RMS diversity"


class SampleMetrics:
    """Settings: `lpips_weights` (else $HDDM_LPIPS_WEIGHTS / the installed build), `clip_model` and
    `clip_pretrained` (else $HDDM_CLIP_MODEL / $HDDM_CLIP_PRETRAINED / ViT-B-32 laion2b_s34b_b79k)."""

    def __init__(self, lpips_weights: str | None = None, clip_model: str | None = None,
                 clip_pretrained: str | None = None, device: str = "cpu"):
        self.lpips, self.lpips_reason = load_lpips(lpips_weights, device)
        self.clip, self.clip_reason = load_clip_scorer(clip_model, clip_pretrained, device)
        self.clip_name = self.clip.name if self.clip is not None else clip_name(clip_model, clip_pretrained)
        for what, reason in (("LPIPS", self.lpips_reason), ("CLIP score", self.clip_reason)):
            if reason:
                log.warning("%s unavailable: %s", what, reason)

    @property
    def diversity(self) -> str:
        """The diversity metric a report plots: LPIPS when its weights are here, else the pixel substitute."""
        return LPIPS_NAME if self.lpips is not None else PIXEL_NAME

    def __call__(self, images_by_prompt: Mapping[str, object], images, prompts: Sequence[str]) -> dict[str, MetricResult]:
        """{name: result} for one variant: images_by_prompt groups the seeds of each prompt; images [N, 3, H, W]
        in [-1, 1] with prompts[i] the caption of images[i] (for CLIP score)."""
        out = [lpips_diversity(images_by_prompt, model=self.lpips) if self.lpips is not None
               else MetricResult.unavailable(LPIPS_NAME, self.lpips_reason),
               pixel_diversity(images_by_prompt),
               self.clip(images, prompts) if self.clip is not None
               else MetricResult.unavailable(self.clip_name, self.clip_reason)]
        return {m.name: m for m in out}
