"""The clustering map: every embedding assigned to the fitted centroids, one Dask task per embedding
shard on 2 worker processes, equal to the cluster stage's own single-process assignment."""
from __future__ import annotations

import pytest

from hddm_core.data.cluster import CENTROIDS, ClusterConfig, cluster_stage, read_assignments
from hddm_core.data.cluster_map import assign_map
from hddm_core.data.coordinator import DaskExecutor
from hddm_core.data.embed import EmbedConfig, embed
from hddm_core.storage import ArtifactStore
from tests.data.fixtures_b import GroupEmbedder, samples_hash, shape_samples


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    store = ArtifactStore(str(tmp_path_factory.mktemp("clu")))
    samples = shape_samples(per_group=8)  # 24 samples in 6 shards
    embed(store, "emb", GroupEmbedder(), samples=samples, input_hash=samples_hash(samples),
          config=EmbedConfig(batch_size=4, shard_size=4))
    cluster_stage(store, "clu", "emb", ClusterConfig(n_clusters=3, level_sizes=[6, 3], thumbnails_per_cluster=0))
    return store, [s.key for s in samples]


def test_assignment_map_on_two_dask_workers_matches_the_cluster_stage(clustered):
    from distributed import Client, LocalCluster

    store, keys = clustered
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      worker_dashboard_address=None) as c, Client(c) as client:
        got_keys, labels = assign_map(store, "emb", f"clu/{CENTROIDS}", DaskExecutor(client, timeout_s=60))
    assert got_keys == keys  # every sample exactly once, in input order
    expected = read_assignments(store, "clu")
    assert dict(zip(got_keys, labels.tolist())) == expected
    assert sorted(set(expected.values())) == [0, 1, 2]


def test_assignment_map_needs_the_centroids(clustered):
    store, _ = clustered
    with pytest.raises(FileNotFoundError, match="run the cluster stage first"):
        assign_map(store, "emb", "clu/missing.safetensors")
