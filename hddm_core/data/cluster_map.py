"""Assignment of every embedding to fitted centroids as a map over the embed stage's shards.

Each task reads one embedding shard and the published centroids (cached per worker process) and
returns that shard's keys and top-level labels under `assign_to_clusters`, the rule the cluster stage
itself uses; memory per task is one shard. The coordinator concatenates in shard order, so the
result equals the single-process assignment of the same embeddings, key for key. With
`levels=True` a task returns every level's labels (the cluster stage's assignments table needs
them); on a worker with a faiss GPU build and a GPU the nearest-centroid search runs there.
"""
from __future__ import annotations

import json

import numpy as np

from hddm_core.data.cluster import assign_to_clusters, load_centroids, normalize_rows
from hddm_core.storage import ArtifactStore

_CENTROIDS: dict[tuple, tuple] = {}


def _centroids(store: ArtifactStore, key: str, sha256: str | None = None):
    cache_key = (store.root, key, store.size(key), sha256)  # sha256: a rewritten file of the same size is new
    if cache_key not in _CENTROIDS:
        _CENTROIDS.clear()  # one run's centroids at a time
        with store.local_path(key) as path:
            _CENTROIDS[cache_key] = load_centroids(path)
    return _CENTROIDS[cache_key]


def _levels(x: np.ndarray, centroids: list, parents: list, normalize: bool) -> list[np.ndarray]:
    """Labels per level under the published rule: nearest level-1 centroid, then the parent maps."""
    from hddm_core.data.cluster_sample import faiss_gpu, nearest

    labels = [nearest(normalize_rows(x) if normalize else x, centroids[0], faiss_gpu())]
    for parent in parents[1:]:
        labels.append(parent[labels[-1]])
    return labels


def assign_shard(store_root: str, storage_options: dict | None, shard_key: str, centroids_key: str,
                 levels: bool = False, centroids_sha256: str | None = None):
    """(keys, labels [n] int64) of one embedding shard; levels: (keys, [labels per level])."""
    from safetensors import safe_open

    store = ArtifactStore(store_root, storage_options)
    centroids, parents, normalize = _centroids(store, centroids_key, centroids_sha256)
    with store.local_path(shard_key) as path, safe_open(path, framework="numpy") as f:
        keys = json.loads(f.metadata()["keys"])
        x = f.get_tensor("embeddings").astype(np.float32)
    if levels:
        return keys, _levels(x, centroids, parents, normalize)
    return keys, assign_to_clusters(x, centroids, parents, normalize)


def assign_map(store: ArtifactStore, embed_prefix: str, centroids_key: str, executor=None, levels: bool = False):
    """(keys, labels) of every embedding the embed manifest names, one task per shard, in shard order;
    levels: (keys, [labels of every key per level])."""
    from hddm_core.data.coordinator import InProcess
    from hddm_core.data.embed import STAGE, STREAM
    from hddm_core.data.sharded_stage import manifest_stream_files, require_manifest

    if not store.exists(centroids_key):
        raise FileNotFoundError(f"no centroids at {store.uri(centroids_key)}: run the cluster stage first")
    shards = manifest_stream_files(require_manifest(store, embed_prefix, STAGE), STREAM, ".safetensors")
    from hddm_core.manifests import hash_store_object

    sha = hash_store_object(store, centroids_key)  # workers cache the centroids under their content hash
    items = [(store.root, store.storage_options, f"{embed_prefix}/{s}", centroids_key, levels, sha) for s in shards]
    parts = (executor or InProcess()).run(assign_shard, items, [f"assign-{i:05d}" for i in range(len(items))])
    keys = [k for part_keys, _ in parts for k in part_keys]
    if len(keys) != len(set(keys)):
        raise ValueError(f"{store.uri(embed_prefix)}: duplicate sample keys across embedding shards")
    if levels:
        n_levels = len(parts[0][1]) if parts else 0
        return keys, [np.concatenate([lab[level] for _, lab in parts]) for level in range(n_levels)]
    labels = np.concatenate([lab for _, lab in parts]) if parts else np.zeros(0, np.int64)
    return keys, labels
