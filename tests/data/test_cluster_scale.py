"""Clustering at scale: centroids fitted on a bounded, seeded sample with Vo et al.'s resampling, every
embedding assigned by the map over embedding shards (in-process and on 2 Dask workers)."""
from __future__ import annotations

import numpy as np
import pytest

from hddm_core.data.cluster import CENTROIDS, ClusterConfig, assign_to_clusters, load_centroids, read_assignments
from hddm_core.data.cluster_sample import SampleFit, closest_per_cluster, fit_on_sample, sample_positions
from hddm_core.data.cluster_scale import cluster_stage_sampled
from hddm_core.data.coordinator import DaskExecutor, InProcess
from hddm_core.data.embed import EmbedConfig, embed, read_embeddings
from hddm_core.storage import ArtifactStore
from tests.data.fixtures_b import GroupEmbedder, samples_hash, shape_samples

CONFIG = ClusterConfig(n_clusters=3, level_sizes=[6, 3], thumbnails_per_cluster=0)
FIT = SampleFit(max_sample_bytes=16 * 8 * 4, resample_steps=3)  # 16 of the 24 8-d float32 rows


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    store = ArtifactStore(str(tmp_path_factory.mktemp("clu")))
    samples = shape_samples(per_group=8)  # 24 samples in 6 shards of 4
    embed(store, "emb", GroupEmbedder(), samples=samples, input_hash=samples_hash(samples),
          config=EmbedConfig(batch_size=4, shard_size=4))
    return store


def single_process_labels(store, prefix):
    """Every embedding in one process under the published centroids and parents."""
    keys, x = read_embeddings(store, "emb")
    with store.local_path(f"{prefix}/{CENTROIDS}") as path:
        centroids, parents, normalize = load_centroids(path)
    return dict(zip(keys, assign_to_clusters(x, centroids, parents, normalize).tolist()))


def test_the_sample_is_seeded_bounded_and_drawn_without_replacement():
    a = sample_positions(1000, 8, 100 * 8 * 4 + 31, seed=5)
    assert len(a) == 100 and len(set(a.tolist())) == 100 and list(a) == sorted(a) and a.max() < 1000
    assert np.array_equal(a, sample_positions(1000, 8, 100 * 8 * 4, seed=5))
    assert not np.array_equal(a, sample_positions(1000, 8, 100 * 8 * 4, seed=6))
    assert np.array_equal(sample_positions(10, 8, 1 << 20, seed=5), np.arange(10))  # everything fits
    with pytest.raises(ValueError, match="max_sample_bytes=16 holds no 8-d float32 row; need >= 32"):
        sample_positions(10, 8, 16, seed=0)


def test_resampling_takes_the_points_closest_to_each_centroid():
    items = np.array([[0.0], [3.0], [1.0], [10.0], [12.0], [11.5], [30.0]], np.float32)
    centroids = np.array([[0.5], [11.0], [30.0]], np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    # cluster 0: distances 0.5, 2.5, 0.5 (tie: lower index first); cluster 1: 1, 1, 0.5; cluster 2: one point
    assert closest_per_cluster(items, centroids, labels, 2).tolist() == [0, 2, 3, 5, 6]


def test_a_resampling_step_refits_on_the_closest_points_of_every_cluster():
    """One step of Vo et al.'s resampling, spelled out: fit, take each cluster's r closest points, refit
    from the current centroids; the upper level clusters the level-1 centroids, unweighted."""
    from hddm_core.data.cluster_sample import _kmeans, nearest

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.3, (n, 2)) for c, n in (([0, 0], 200), ([5, 0], 40), ([0, 5], 20))])
    x = x.astype(np.float32)
    fit = fit_on_sample(x, 2, [6, 2], seed=3, normalize=False, resample_steps=1, resample_size=4, gpu=False)
    first = _kmeans(x, 6, 3, 25, 1, False)
    picked = closest_per_cluster(x, first, nearest(x, first), 4)
    assert len(picked) == 24  # 4 from each of the 6 clusters: balanced, whatever their sizes
    level1 = _kmeans(x[picked], 6, 3, 25, 1, False, init=first)
    assert np.array_equal(fit.centroids_by_level[0], level1)
    assert np.array_equal(fit.parents_by_level[1], nearest(level1, fit.centroids_by_level[1]))
    assert np.array_equal(fit.labels, fit.parents_by_level[1][nearest(x, level1)])


def test_the_sampled_fit_is_seeded_and_reproducible(embedded):
    _, x = read_embeddings(embedded, "emb")
    a = fit_on_sample(x, 3, [6, 3], seed=1, resample_steps=3, gpu=False)
    b = fit_on_sample(x, 3, [6, 3], seed=1, resample_steps=3, gpu=False)
    for ca, cb in zip(a.centroids_by_level, b.centroids_by_level):
        assert np.array_equal(ca, cb)
    assert np.array_equal(a.parents_by_level[1], b.parents_by_level[1])


def test_every_embedding_is_assigned_once_equal_to_the_single_process_rule(embedded):
    store = embedded
    manifest = cluster_stage_sampled(store, "clu", "emb", CONFIG, FIT, executor=InProcess())
    keys, _ = read_embeddings(store, "emb")
    assigned = read_assignments(store, "clu")
    assert sorted(assigned) == sorted(keys) and len(assigned) == 24  # each key once
    assert assigned == single_process_labels(store, "clu")
    assert manifest.counts["fit"] == {"sample_rows": 16, "sample_bytes": 512, "max_sample_bytes": 512,
                                      "embeddings": 24, "device": "faiss-cpu"}
    assert manifest.config["fit"]["max_sample_bytes"] == 512
    again = cluster_stage_sampled(store, "clu2", "emb", CONFIG, FIT, executor=InProcess())
    assert store.read_bytes(f"clu2/{CENTROIDS}") == store.read_bytes(f"clu/{CENTROIDS}")  # seeded: reproducible
    assert again.outputs["assignments.parquet"] == manifest.outputs["assignments.parquet"]
    with pytest.raises(ValueError, match="balance=True is the whole-matrix fit"):
        cluster_stage_sampled(store, "clu3", "emb", ClusterConfig(n_clusters=3, level_sizes=[6, 3], balance=True), FIT)


@pytest.mark.slow  # two worker processes import numpy, faiss and safetensors
def test_the_sampled_stage_on_two_dask_workers_equals_in_process(embedded):
    from distributed import Client, LocalCluster

    store = embedded
    reference = cluster_stage_sampled(store, "clu-ref", "emb", CONFIG, FIT, executor=InProcess())
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      worker_dashboard_address=None) as c, Client(c) as client:
        manifest = cluster_stage_sampled(store, "clu-dask", "emb", CONFIG, FIT,
                                         executor=DaskExecutor(client, timeout_s=120))
    same = [k for k in reference.outputs if not k.startswith("report.")]  # the report names its own prefix
    assert {k: manifest.outputs[k] for k in same} == {k: reference.outputs[k] for k in same}
    assert manifest.counts == reference.counts  # same sample, sizes
    assert read_assignments(store, "clu-dask") == single_process_labels(store, "clu-dask")


def test_the_cluster_stage_runs_sampled_when_its_parameters_bound_the_memory(embedded):
    from hddm_core.pipeline.params import ClusterParams
    from hddm_core.pipeline.stages import run_cluster

    params = ClusterParams(artifact_root=embedded.root, n_clusters=3, level_sizes=[6, 3], max_sample_bytes=512,
                           resample_steps=3, embed_prefix="emb", prefix="clu-params")
    ref = run_cluster(params)
    assert ref.counts["fit"]["sample_rows"] == 16 and ref.counts["fit"]["max_sample_bytes"] == 512
    assert read_assignments(embedded, "clu-params") == single_process_labels(embedded, "clu-params")
