"""The held-out split: samples the prepare stage sets aside per cluster, never trained on.

Evaluation draws its prompts and reference images from it (the paper holds out 50K images for
FID-50K and samples its diversity prompts from held-out captions). The selection depends only on the
cluster assignments, the seed and the rule, never on input order, batches or workers: within each
cluster the keys are ranked by sha256("<seed>:<key>") and the first n_c are held out, with
n_c = min(per_cluster, floor(max_fraction * size of cluster c)). A held-out sample goes to the stream
`holdout_<c>` (the cluster stream's format: latents, text tokens, captions) and to no cluster or
router stream.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

HOLDOUT_PREFIX = "holdout_"
RULE = ("per cluster, keys ranked by sha256('<seed>:<key>'); the first min(per_cluster, "
        "floor(max_fraction * cluster size)) held out")


def holdout_stream(cluster: int) -> str:
    return f"{HOLDOUT_PREFIX}{int(cluster):03d}"


@dataclass(frozen=True)
class HoldoutRule:
    per_cluster: int = 0  # 0: no held-out split
    max_fraction: float = 0.25  # most of each cluster stays for training
    seed: int = 0

    def validate(self) -> "HoldoutRule":
        if int(self.per_cluster) < 0:
            raise ValueError(f"holdout_per_cluster must be >= 0, got {self.per_cluster!r}")
        if not 0.0 <= float(self.max_fraction) < 1.0:
            raise ValueError(f"holdout_max_fraction must be in [0, 1), got {self.max_fraction!r}")
        if int(self.seed) < 0:
            raise ValueError(f"holdout_seed must be >= 0, got {self.seed!r}")
        return self

    def describe(self) -> dict:
        return {**asdict(self), "rule": RULE}


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{int(seed)}:{key}".encode()).hexdigest()


def select_holdout(assignments: dict[str, int], rule: HoldoutRule) -> dict[str, int]:
    """{held-out key: cluster} from the cluster stage's {key: cluster}."""
    rule.validate()
    if rule.per_cluster == 0:
        return {}
    by_cluster: dict[int, list[str]] = {}
    for key, cluster in assignments.items():
        by_cluster.setdefault(int(cluster), []).append(key)
    held = {}
    for cluster, keys in by_cluster.items():
        n = min(int(rule.per_cluster), int(float(rule.max_fraction) * len(keys)))
        for key in sorted(keys, key=lambda k: (_rank(rule.seed, k), k))[:n]:
            held[key] = cluster
    return held
