"""Hierarchical k-means fitted on a seeded sample, with the resampling of Vo et al. 2024.

Why a sample: fitting on all 11M x 1024 float32 embeddings needs 45 GB in one process. Here the
centroids are fitted on at most `max_sample_bytes` of embeddings (rows drawn uniformly without
replacement by a seeded generator, read as a map over the embed shards, one shard per task), and
every embedding is then assigned by the map of hddm_core.data.cluster_map.

The fit follows Vo et al. 2024 ("Automatic Data Curation for Self-Supervised Learning: A
Clustering-Based Approach", Sec. 4 and their ssl-data-curation code): level 1 runs k-means on the
sample, level l on the centroids of level l-1 (unweighted: each finer cluster counts once, which is
what balances the hierarchy); within a level, `resample_steps` times, each cluster contributes its
`resample_size` points closest to its centroid (balanced across the clusters, their "closest"
strategy; default half the mean cluster size, their choice) and k-means is refitted on those
points. A lower-level centroid's parent is its nearest centroid of the level above.

faiss runs on the GPU when one is present (faiss.get_num_gpus() > 0 and a GPU build), else on CPU;
the device is recorded in the manifest (results of the two are not bitwise equal).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np

from hddm_core.data.cluster import HierarchicalClusters, _compose, auto_level_sizes, normalize_rows
from hddm_core.storage import ArtifactStore

log = logging.getLogger(__name__)


def faiss_gpu() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass
class SampleFit:
    max_sample_bytes: int = 4 << 30  # float32 rows held by the fit; the bound the manifest states
    resample_steps: int = 10  # Vo et al. use 10 on the upper levels
    resample_size: int | None = None  # points per cluster per step; None = half the mean cluster size

    def validate(self) -> "SampleFit":
        if int(self.max_sample_bytes) < 1:
            raise ValueError(f"max_sample_bytes must be a positive integer, got {self.max_sample_bytes!r}")
        if int(self.resample_steps) < 0:
            raise ValueError(f"resample_steps must be >= 0, got {self.resample_steps!r}")
        if self.resample_size is not None and int(self.resample_size) < 1:
            raise ValueError(f"resample_size must be >= 1 or None (half the mean cluster size), "
                             f"got {self.resample_size!r}")
        return self


def sample_positions(total: int, dim: int, max_sample_bytes: int, seed: int) -> np.ndarray:
    """Sorted input positions of the sample: every row if they fit in max_sample_bytes (float32),
    else as many as fit, drawn uniformly without replacement by a generator seeded with `seed`."""
    n = min(int(total), int(max_sample_bytes) // (4 * int(dim)))
    if n < 1:
        raise ValueError(f"max_sample_bytes={max_sample_bytes} holds no {dim}-d float32 row; need >= {4 * dim}")
    if n == total:
        return np.arange(total, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(int(total), n, replace=False)).astype(np.int64)


def shard_rows(store_root: str, storage_options: dict | None, shard_key: str, rows: list[int]):
    """(keys, float32 [len(rows), D]) of the given rows of one embedding shard (a map task)."""
    from safetensors import safe_open

    store = ArtifactStore(store_root, storage_options)
    with store.local_path(shard_key) as path, safe_open(path, framework="numpy") as f:
        keys = json.loads(f.metadata()["keys"])
        x = f.get_tensor("embeddings")[rows].astype(np.float32)
    return [keys[r] for r in rows], x


def shard_sizes(store: ArtifactStore, embed_prefix: str) -> tuple[list[str], list[int]]:
    """(embedding shard keys in order, rows per shard) from the shards' done-markers (no tensor read)."""
    from hddm_core.data.embed import STAGE, STREAM
    from hddm_core.data.sharded_stage import manifest_stream_files, require_manifest

    files = manifest_stream_files(require_manifest(store, embed_prefix, STAGE), STREAM, ".safetensors")
    sizes = [len(store.read_json(f"{embed_prefix}/{f[:-len('.safetensors')]}.done.json")["keys"]) for f in files]
    return [f"{embed_prefix}/{f}" for f in files], sizes


def read_sample(store: ArtifactStore, embed_prefix: str, dim: int, max_sample_bytes: int, seed: int, executor=None):
    """(keys, float32 [n, D], total rows) of the seeded sample, one map task per shard holding sampled rows."""
    from hddm_core.data.coordinator import InProcess

    shards, sizes = shard_sizes(store, embed_prefix)
    positions = sample_positions(sum(sizes), dim, max_sample_bytes, seed)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    items, names = [], []
    for i, shard in enumerate(shards):
        lo, hi = np.searchsorted(positions, [bounds[i], bounds[i + 1]])
        if hi > lo:
            items.append((store.root, store.storage_options, shard, (positions[lo:hi] - bounds[i]).tolist()))
            names.append(f"sample-{i:05d}")
    parts = (executor or InProcess()).run(shard_rows, items, names)
    keys = [k for part_keys, _ in parts for k in part_keys]
    x = np.concatenate([p for _, p in parts]) if parts else np.zeros((0, dim), np.float32)
    return keys, x, int(bounds[-1])


def _kmeans(x: np.ndarray, k: int, seed: int, n_iter: int, n_redo: int, gpu: bool, init=None) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=n_iter, nredo=1 if init is not None else n_redo, seed=seed,
                      verbose=False, gpu=gpu, min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    km.train(np.ascontiguousarray(x, dtype=np.float32), init_centroids=init)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def nearest(points: np.ndarray, centroids: np.ndarray, gpu: bool = False) -> np.ndarray:
    """Index of the nearest centroid (L2) of each point; faiss on the GPU when asked."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    if gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, labels = index.search(np.ascontiguousarray(points, dtype=np.float32), 1)
    return labels[:, 0].astype(np.int64)


def closest_per_cluster(items: np.ndarray, centroids: np.ndarray, labels: np.ndarray, size: int) -> np.ndarray:
    """Indices of the `size` items closest to their own centroid in every cluster (fewer if it has fewer),
    cluster by cluster; ties broken by index (a stable sort), so the choice is deterministic."""
    d = ((items - centroids[labels]) ** 2).sum(1)
    order = np.lexsort((np.arange(len(items)), d, labels))  # by cluster, then distance, then index
    rank = np.arange(len(order)) - np.searchsorted(labels[order], labels[order])  # rank within the cluster
    return np.sort(order[rank < size])


def fit_on_sample(x: np.ndarray, n_clusters: int, level_sizes: list[int] | None = None, *, seed: int = 0,
                  n_iter: int = 25, n_redo: int = 1, normalize: bool = True, resample_steps: int = 10,
                  resample_size: int | None = None, gpu: bool | None = None) -> HierarchicalClusters:
    """Level-by-level k-means with Vo et al.'s resampling steps; labels are the sample's."""
    gpu = faiss_gpu() if gpu is None else bool(gpu)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"sample must be a non-empty [n, D] matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("sample embeddings contain NaN or Inf")
    sizes = list(level_sizes) if level_sizes is not None else auto_level_sizes(len(x), n_clusters)
    if not sizes or sizes[-1] != n_clusters or any(b >= a for a, b in zip(sizes, sizes[1:])) \
            or sizes[0] > len(x) or min(sizes) < 1:
        raise ValueError(f"level_sizes must strictly decrease from at most the sample size {len(x)} "
                         f"to n_clusters={n_clusters}, got {sizes}")
    if normalize:
        x = normalize_rows(x)
    centroids_by_level, parents_by_level, items = [], [], x
    for level, k in enumerate(sizes):
        centroids = _kmeans(items, k, seed + level, n_iter, n_redo, gpu)
        size = int(resample_size) if resample_size is not None else len(items) // k // 2
        for step in range(resample_steps if size >= 1 and len(items) > k else 0):
            labels = nearest(items, centroids, gpu)
            picked = closest_per_cluster(items, centroids, labels, size)
            if len(picked) < k:  # too few to fit k centroids: keep the current ones
                break
            centroids = _kmeans(items[picked], k, seed + level, n_iter, 1, gpu, init=centroids)
        parents_by_level.append(nearest(items, centroids, gpu) if level > 0 else np.zeros(0, np.int64))
        centroids_by_level.append(centroids)
        items = centroids
        log.info("sampled hierarchical k-means: level %d, k=%d, %d resampling steps of %d per cluster",
                 level + 1, k, resample_steps, size)
    labels_by_level = _compose(x, centroids_by_level, parents_by_level)
    return HierarchicalClusters(sizes, centroids_by_level, parents_by_level, labels_by_level[-1], labels_by_level,
                                normalize)
