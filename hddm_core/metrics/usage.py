"""Expert usage over sampling time and router entropy, from EnsembleResult records.

usage[step, k] is the mean routing weight expert k carried at that step's t (rows sum to 1);
router entropy is the mean entropy in nats of p(k | x_t, t) (log K = uniform, 0 = certain).
"""
from __future__ import annotations

import math

import numpy as np


def usage_summary(result) -> dict:
    """Per-expert mean weight, weight above/below t = 0.5, and entropy figures of one run."""
    usage = result.usage.numpy()
    times = result.times.numpy()
    hi, lo = times > 0.5, times <= 0.5
    ent = result.router_entropy.numpy()
    names = result.expert_names
    return {
        "experts": names,
        "mean_weight": dict(zip(names, usage.mean(0).round(6).tolist())),
        "mean_weight_t_gt_0.5": dict(zip(names, (usage[hi].mean(0) if hi.any() else np.zeros(len(names))).round(6).tolist())),
        "mean_weight_t_le_0.5": dict(zip(names, (usage[lo].mean(0) if lo.any() else np.zeros(len(names))).round(6).tolist())),
        "router_entropy_mean_nats": None if np.isnan(ent).all() else float(np.nanmean(ent)),
        "router_entropy_max_nats": math.log(len(names)),
        "weight_entropy_mean_nats": float(result.weight_entropy.mean()),
        "expert_rows": dict(zip(names, result.counts.expert_rows)),
    }


def expert_cost(result) -> float:
    """Mean experts run per sample per step (1 for Top-1, K for Full); from rows actually dispatched."""
    steps = len(result.times)
    rows = sum(result.counts.expert_rows)
    return rows / max(1, steps * len(result.seeds))
