"""Hierarchical k-means (faiss), the contributor's assign_to_clusters, and the cluster stage."""
import io

import numpy as np
import pytest
from PIL import Image

from hddm_core.data.cluster import (ClusterConfig, assign_to_clusters, auto_level_sizes, cluster_stage,
                                    hierarchical_kmeans, load_centroids, read_assignments)
from hddm_core.data.cluster_report import agreement
from hddm_core.data.embed import EmbedConfig, embed
from hddm_core.storage import ArtifactStore
from tests.data.fixtures_b import GroupEmbedder, samples_hash, shape_samples


def blobs(n_per=(250,) * 8, dim=32, seed=0, spread=3.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(n_per), dim)) * spread
    groups = np.repeat(np.arange(len(n_per)), n_per)
    return (centres[groups] + rng.normal(size=(len(groups), dim))).astype(np.float32), groups


@pytest.mark.slow  # over 10 s
def test_recovers_separated_groups_and_is_deterministic():
    x, groups = blobs()
    a = hierarchical_kmeans(x, 8, seed=3)
    b = hierarchical_kmeans(x, 8, seed=3)
    assert a.level_sizes == [126, 8]
    assert agreement(a.labels, groups)["ami"] > 0.97
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids_by_level[0], b.centroids_by_level[0])
    # composition: a point's top label is its level-1 cluster's parent
    np.testing.assert_array_equal(a.labels, a.parents_by_level[1][a.labels_by_level[0]])


def test_three_levels_compose():
    x, groups = blobs(dim=16)
    r = hierarchical_kmeans(x, 8, [200, 40, 8], seed=0)
    assert [len(c) for c in r.centroids_by_level] == [200, 40, 8]
    np.testing.assert_array_equal(r.labels, r.parents_by_level[2][r.parents_by_level[1][r.labels_by_level[0]]])
    assert agreement(r.labels, groups)["ami"] > 0.9


@pytest.mark.parametrize("balance", [False, True])
def test_assign_to_clusters_reproduces_pipeline_labels(balance):
    x, _ = blobs(n_per=(700, 300, 200, 150, 100, 100, 80, 70), seed=1)
    r = hierarchical_kmeans(x, 8, seed=0, balance=balance)
    np.testing.assert_array_equal(assign_to_clusters(x, r.centroids_by_level, r.parents_by_level), r.labels)
    if not balance:  # unbalanced parents are nearest centroids: the centroids alone suffice
        np.testing.assert_array_equal(assign_to_clusters(x, r.centroids_by_level), r.labels)


def test_balance_caps_cluster_sizes():
    x, _ = blobs(n_per=(900, 300, 200, 150, 100, 100, 80, 70), seed=2)
    plain = np.bincount(hierarchical_kmeans(x, 8, seed=0).labels, minlength=8)
    r = hierarchical_kmeans(x, 8, seed=0, balance=True, balance_tolerance=0.1)
    sizes = np.bincount(r.labels, minlength=8)
    largest_level1 = np.bincount(r.labels_by_level[0]).max()
    assert sizes.max() <= len(x) / 8 * 1.1 + largest_level1  # capacity, up to one level-1 cluster
    assert sizes.max() < plain.max()


def test_bad_inputs_are_refused():
    x, _ = blobs()
    with pytest.raises(ValueError, match="end at n_clusters"):
        hierarchical_kmeans(x, 8, [100, 10])
    with pytest.raises(ValueError, match="strictly decrease"):
        hierarchical_kmeans(x, 8, [4000, 8])
    with pytest.raises(ValueError, match="NaN"):
        hierarchical_kmeans(np.full((20, 3), np.nan), 2)
    with pytest.raises(ValueError, match="balance"):
        hierarchical_kmeans(x, 8, [8], balance=True)
    r = hierarchical_kmeans(x, 8, seed=0)
    with pytest.raises(ValueError, match=r"\[N, 32\]"):
        assign_to_clusters(x[:, :5], r.centroids_by_level)
    with pytest.raises(ValueError, match="n_points"):
        auto_level_sizes(3, 8)


def test_agreement_metrics_on_a_hand_made_case():
    q = agreement([0, 0, 0, 1, 1, 1], ["a", "a", "b", "b", "b", "b"])
    assert q["purity"] == pytest.approx(5 / 6) and q["majority_baseline_purity"] == pytest.approx(4 / 6)
    assert agreement([0, 0, 1, 1], ["x", "x", "y", "y"])["ami"] == pytest.approx(1.0)


def test_cluster_stage_writes_assignments_centroids_picture_and_report(tmp_path):
    store = ArtifactStore(str(tmp_path / "a"))
    samples = shape_samples(per_group=10)  # 30 samples in 3 colour groups
    embed(store, "emb", GroupEmbedder(), samples=samples, input_hash=samples_hash(samples),
          config=EmbedConfig(batch_size=8, shard_size=16))
    cfg = ClusterConfig(n_clusters=3, level_sizes=[9, 3], thumbnails_per_cluster=4)
    m = cluster_stage(store, "clu", "emb", cfg, samples=samples)
    labels = read_assignments(store, "clu")
    assert sorted(labels) == sorted(s.key for s in samples)
    assert m.counts["agreement"]["ami"] > 0.9 and m.counts["agreement"]["purity"] == 1.0
    report = store.read_bytes("clu/report.md").decode()
    assert "adjusted mutual information" in report and "mean-colour (test stand-in)" in report
    picture = Image.open(io.BytesIO(store.read_bytes("clu/clusters.png")))
    assert picture.size[0] > 300 and picture.size[1] > 300
    centroids, parents, normalize = load_centroids(store.path("clu/centroids.safetensors"))
    _, x = __import__("hddm_core.data.embed", fromlist=["read_embeddings"]).read_embeddings(store, "emb")
    keys = [s.key for s in samples]
    np.testing.assert_array_equal(assign_to_clusters(x, centroids, parents, normalize),
                                  [labels[k] for k in sorted(labels, key=keys.index)])
    again = cluster_stage(store, "clu", "emb", cfg, samples=samples)
    assert again.created_at == m.created_at
