"""Hierarchical k-means (faiss) of image embeddings into K top-level clusters.

Following Vo et al. 2024 ("Automatic Data Curation for Self-Supervised Learning: A Clustering-Based
Approach", Sec. 4): level 1 runs k-means on the points; level L runs k-means on the centroids of
level L-1 (weighted here by how many points each represents, so the top level reflects data mass);
a point's label at level L is composed through the parent map of every level below. Seeds are
fixed. Optional balancing (`balance=True`) assigns the level L-1 centroids to level-L clusters under
a capacity (the mean size times 1 + balance_tolerance) instead of nearest-centroid.

Assignment is defined by the published artefacts alone: a point goes to its nearest level-1
centroid, then through `parents_by_level`. `assign_to_clusters` is that rule, and the pipeline
computes its own labels with it, so a contributor with the published centroids and parents gets the
same labels as the pipeline for the same points.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


def auto_level_sizes(n_points: int, n_clusters: int, max_ratio: int = 25) -> list[int]:
    """Cluster counts per level, bottom to top, ending at n_clusters.

    Level 1 has about sqrt(N K) clusters (at most N/4, so each has a few points); levels between
    shrink geometrically by at most max_ratio (Vo et al. use 4 levels for 10^9 images).
    """
    if n_clusters < 1 or n_points < n_clusters:
        raise ValueError(f"need n_clusters >= 1 and n_points >= n_clusters, got K={n_clusters}, N={n_points}")
    bottom = int(min(max(round(math.sqrt(n_points * n_clusters)), n_clusters), max(n_points // 4, n_clusters)))
    if bottom <= n_clusters:
        return [n_clusters]
    levels = max(1, math.ceil(math.log(bottom / n_clusters) / math.log(max_ratio)))
    sizes = [int(round(n_clusters * (bottom / n_clusters) ** (1 - i / levels))) for i in range(levels)]
    return sorted(set(sizes), reverse=True) + [n_clusters]


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _nearest(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, labels = index.search(np.ascontiguousarray(points, dtype=np.float32), 1)
    return labels[:, 0].astype(np.int64)


def _capacity_assign(points: np.ndarray, weights: np.ndarray, centroids: np.ndarray, capacity: float) -> np.ndarray:
    """Greedy capacity-constrained assignment: items most sure of their nearest centroid go first,
    each to its nearest centroid with room left (the nearest overall if none has room)."""
    d = (points ** 2).sum(1)[:, None] - 2.0 * points @ centroids.T + (centroids ** 2).sum(1)[None, :]  # [n, k]
    order_pref = np.argsort(d, axis=1)
    sorted_d = np.take_along_axis(d, order_pref, axis=1)
    margin = sorted_d[:, 1] - sorted_d[:, 0] if d.shape[1] > 1 else np.zeros(len(points))
    load = np.zeros(len(centroids))
    labels = np.empty(len(points), np.int64)
    for i in np.lexsort((np.arange(len(points)), -margin)):  # largest margin first; ties by index
        choice = next((c for c in order_pref[i] if load[c] + weights[i] <= capacity), order_pref[i][0])
        labels[i] = choice
        load[choice] += weights[i]
    return labels


def _kmeans_pp(items: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with each item's draw probability scaled by its weight (its point count),
    so a centroid that stands for one outlier point rarely seeds a top-level cluster."""
    chosen = [int(rng.choice(len(items), p=weights / weights.sum()))]
    d2 = ((items - items[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        p = weights * d2
        idx = int(rng.choice(len(items), p=p / p.sum())) if p.sum() > 0 else int(rng.integers(len(items)))
        chosen.append(idx)
        d2 = np.minimum(d2, ((items - items[idx]) ** 2).sum(1))
    return np.ascontiguousarray(items[chosen], dtype=np.float32)


def _kmeans(items: np.ndarray, weights: np.ndarray | None, k: int, seed: int, n_iter: int, n_redo: int) -> np.ndarray:
    """faiss k-means; on weighted items (upper levels) seeded by weighted k-means++ and restarted
    n_redo times, keeping the lowest weighted objective."""
    import faiss

    def make(s: int):
        return faiss.Kmeans(items.shape[1], k, niter=n_iter, nredo=1 if weights is not None else n_redo, seed=s,
                            verbose=False, min_points_per_centroid=1, max_points_per_centroid=1 << 30)

    if weights is None:
        km = make(seed)
        km.train(items)
        return np.ascontiguousarray(km.centroids, dtype=np.float32)
    rng = np.random.default_rng(seed)
    best, best_obj = None, np.inf
    for r in range(max(1, n_redo)):
        km = make(seed * 1000 + r)
        km.train(items, weights=weights, init_centroids=_kmeans_pp(items, weights.astype(np.float64), k, rng))
        if km.obj[-1] < best_obj:
            best, best_obj = np.ascontiguousarray(km.centroids, dtype=np.float32), km.obj[-1]
    return best


@dataclass
class HierarchicalClusters:
    level_sizes: list[int]
    centroids_by_level: list[np.ndarray]  # level l: [k_l, D] (float32)
    parents_by_level: list[np.ndarray]  # level l >= 1: [k_{l-1}] index into level l; level 0: empty
    labels: np.ndarray  # [N] top-level cluster per point
    labels_by_level: list[np.ndarray] = field(default_factory=list)  # [N] per level
    normalize: bool = True


def hierarchical_kmeans(embeddings: np.ndarray, n_clusters: int = 8, level_sizes: list[int] | None = None, *,
                        seed: int = 0, n_iter: int = 25, n_redo: int = 1, n_redo_upper: int = 5, normalize: bool = True,
                        balance: bool = False, balance_tolerance: float = 0.1,
                        balance_rounds: int = 10) -> HierarchicalClusters:
    """Multi-level k-means; level_sizes bottom to top must end at n_clusters (auto if None).

    n_redo restarts the (expensive) level-1 k-means; upper levels cluster only centroids, so they
    afford n_redo_upper restarts (faiss keeps the lowest-objective run)."""

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"embeddings must be a non-empty [N, D] matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or Inf")
    sizes = list(level_sizes) if level_sizes is not None else auto_level_sizes(len(x), n_clusters)
    if not sizes or sizes[-1] != n_clusters:
        raise ValueError(f"level_sizes must end at n_clusters={n_clusters}, got {sizes}")
    if any(b >= a for a, b in zip(sizes, sizes[1:])) or sizes[0] > len(x) or min(sizes) < 1:
        raise ValueError(f"level_sizes must strictly decrease from at most N={len(x)} to >= 1, got {sizes}")
    if balance and len(sizes) < 2:
        raise ValueError(f"balance needs at least two levels (it balances the top level over level-1 centroids), "
                         f"got level_sizes={sizes}")
    if balance_tolerance < 0:
        raise ValueError(f"balance_tolerance must be >= 0, got {balance_tolerance}")
    if normalize:
        x = normalize_rows(x)

    centroids_by_level, parents_by_level = [], []
    items, weights = x, np.ones(len(x), np.float32)
    for level, k in enumerate(sizes):
        centroids = _kmeans(items, weights if level > 0 else None, k, seed + level, n_iter,
                            n_redo if level == 0 else n_redo_upper)
        if balance and level == len(sizes) - 1 and k > 1:
            capacity = float(weights.sum()) / k * (1 + balance_tolerance)
            for _ in range(balance_rounds):
                parent = _capacity_assign(items, weights, centroids, capacity)
                new = np.stack([np.average(items[parent == c], axis=0, weights=weights[parent == c])
                                if (parent == c).any() else centroids[c] for c in range(k)]).astype(np.float32)
                if np.allclose(new, centroids):
                    break
                centroids = new
            parent = _capacity_assign(items, weights, centroids, capacity)
        else:
            parent = _nearest(items, centroids) if level > 0 else np.zeros(0, np.int64)
        if level > 0:
            parents_by_level.append(parent)
            weights = np.bincount(parent, weights=weights, minlength=k).astype(np.float32)
        else:
            parents_by_level.append(np.zeros(0, np.int64))
            weights = np.bincount(_nearest(x, centroids), minlength=k).astype(np.float32)
        centroids_by_level.append(centroids)
        # Empty clusters carry no mass upward; give them a tiny weight so faiss keeps the point.
        items, weights = centroids, np.maximum(weights, 1e-6)
        log.info("hierarchical k-means: level %d, k=%d", level + 1, k)

    labels_by_level = _compose(x, centroids_by_level, parents_by_level)
    return HierarchicalClusters(sizes, centroids_by_level, parents_by_level, labels_by_level[-1], labels_by_level,
                                normalize)


def _compose(x: np.ndarray, centroids_by_level, parents_by_level) -> list[np.ndarray]:
    labels = [_nearest(x, centroids_by_level[0])]
    for parent in parents_by_level[1:]:
        labels.append(parent[labels[-1]])
    return labels


def assign_to_clusters(embeddings: np.ndarray, centroids_by_level: list[np.ndarray],
                       parents_by_level: list[np.ndarray] | None = None, normalize: bool = True) -> np.ndarray:
    """Top-level cluster of each embedding under published centroids (and parent maps).

    Without parents, each level's parent map is the nearest centroid of the level above (the
    unbalanced pipeline's rule); with the published parents the result equals the pipeline's labels.
    """
    if not centroids_by_level:
        raise ValueError("centroids_by_level is empty")
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = centroids_by_level[0].shape[1]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"embeddings must be [N, {dim}] to match the centroids, got shape {x.shape}")
    if normalize:
        x = normalize_rows(x)
    if parents_by_level is None:
        parents_by_level = [np.zeros(0, np.int64)] + [
            _nearest(lower, upper) for lower, upper in zip(centroids_by_level, centroids_by_level[1:])]
    if len(parents_by_level) != len(centroids_by_level):
        raise ValueError(f"{len(parents_by_level)} parent maps for {len(centroids_by_level)} levels")
    for level, (parent, lower) in enumerate(zip(parents_by_level[1:], centroids_by_level), start=1):
        if len(parent) != len(lower):
            raise ValueError(f"parent map of level {level + 1} has {len(parent)} entries, expected {len(lower)}")
    return _compose(x, centroids_by_level, parents_by_level)[-1]


# -- the stage ---------------------------------------------------------------------------------
STAGE = "cluster"
ASSIGNMENTS, CENTROIDS, SIZES, PICTURE = "assignments.parquet", "centroids.safetensors", "sizes.json", "clusters.png"
REPORT_MD, REPORT_JSON = "report.md", "report.json"


@dataclass
class ClusterConfig:
    n_clusters: int = 8
    level_sizes: list[int] | None = None  # bottom to top, ending at n_clusters; None = auto_level_sizes
    seed: int = 0
    n_iter: int = 25
    n_redo: int = 1
    normalize: bool = True
    balance: bool = False
    balance_tolerance: float = 0.1
    group_field: str = "group"  # sample meta field scored against (the emoji's Unicode group)
    thumbnails_per_cluster: int = 8
    thumbnail_size: int = 64

    def validate(self) -> "ClusterConfig":
        if int(self.n_clusters) < 1:
            raise ValueError(f"n_clusters must be >= 1, got {self.n_clusters!r}")
        for name in ("n_iter", "n_redo", "thumbnail_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.thumbnails_per_cluster) < 0:
            raise ValueError(f"thumbnails_per_cluster must be >= 0, got {self.thumbnails_per_cluster!r}")
        return self


def save_centroids(result: HierarchicalClusters) -> bytes:
    """safetensors (never pickle): level_<l>/centroids [k_l, D] and level_<l>/parents [k_{l-1}]."""
    import json
    from safetensors.numpy import save

    tensors = {}
    for level, (c, p) in enumerate(zip(result.centroids_by_level, result.parents_by_level)):
        tensors[f"level_{level}/centroids"] = np.ascontiguousarray(c, dtype=np.float32)
        if level > 0:
            tensors[f"level_{level}/parents"] = np.ascontiguousarray(p, dtype=np.int64)
    from hddm_core.data.safetensors_bytes import canonical_safetensors

    return canonical_safetensors(save(tensors, metadata={  # canonical: the clustering version is its hash
        "level_sizes": json.dumps(result.level_sizes), "normalize": json.dumps(result.normalize),
        "rule": "nearest level-0 centroid, then parents of each level above"}))


def load_centroids(path: str) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    """(centroids_by_level, parents_by_level, normalize) from a published centroids.safetensors file."""
    import json
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
        sizes = json.loads(meta["level_sizes"])
        centroids = [f.get_tensor(f"level_{l}/centroids") for l in range(len(sizes))]
        parents = [np.zeros(0, np.int64)] + [f.get_tensor(f"level_{l}/parents") for l in range(1, len(sizes))]
    return centroids, parents, bool(json.loads(meta["normalize"]))


def cluster_stage(store, out_prefix: str, embed_prefix: str, config: ClusterConfig | None = None, *,
                  samples=None, force: bool = False):
    """Cluster the embed stage's embeddings; write assignments, centroids, sizes, picture, report.

    samples (optional, an iterable of Sample, e.g. iter_download_samples(store, download_prefix))
    supplies thumbnails for the picture and group labels (meta[group_field]) for the agreement.
    All embeddings are held in this process; hddm_core.data.cluster_scale fits on a bounded sample.
    """
    from hddm_core.data.cluster_outputs import write_cluster_outputs
    from hddm_core.data.embed import read_embeddings
    from hddm_core.data.sharded_stage import require_manifest
    from hddm_core.manifests import completed, read_manifest

    config = (config or ClusterConfig()).validate()
    embed_manifest = require_manifest(store, embed_prefix, "embed")
    inputs = {"embeddings": embed_manifest.content_hash}
    cfg = {k: v for k, v in vars(config).items()}
    if not force and (done := completed(store, out_prefix, cfg, inputs)) is not None:
        log.info("cluster: %s already complete, skipped", store.uri(out_prefix))
        return done
    if read_manifest(store, out_prefix) is not None:
        store.delete(f"{out_prefix}/_manifest.json")

    keys, x = read_embeddings(store, embed_prefix)
    result = hierarchical_kmeans(x, config.n_clusters, config.level_sizes, seed=config.seed, n_iter=config.n_iter,
                                 n_redo=config.n_redo, normalize=config.normalize, balance=config.balance,
                                 balance_tolerance=config.balance_tolerance)
    return write_cluster_outputs(store, out_prefix, config, cfg, inputs, embed_manifest, keys, result.labels_by_level,
                                 result, int(x.shape[1]), samples)


def read_assignments(store, prefix: str) -> dict[str, int]:
    """key -> top-level cluster, from a finished cluster stage."""
    import io

    import pyarrow.parquet as pq

    from hddm_core.data.sharded_stage import require_manifest

    require_manifest(store, prefix, STAGE)
    table = pq.read_table(io.BytesIO(store.read_bytes(f"{prefix}/{ASSIGNMENTS}")), columns=["key", "cluster"])
    return dict(zip(table.column("key").to_pylist(), table.column("cluster").to_pylist()))
