"""The held-out split of the prepare stage: seeded, per cluster, never in a training or router shard."""
from __future__ import annotations

import pytest

from hddm_core.data.cluster import ClusterConfig, cluster_stage, read_assignments
from hddm_core.data.embed import EmbedConfig, embed
from hddm_core.data.holdout import HoldoutRule, holdout_stream, select_holdout
from hddm_core.data.latents import PixelSpace
from hddm_core.data.prepare import PrepareConfig, prepare_training_inputs
from hddm_core.storage import ArtifactStore
from tests.data.fixtures_b import GroupEmbedder, samples_hash, shape_samples
from tests.data.test_prepare_dask import tiny_text

ASSIGN = {f"k{i:03d}": i % 3 for i in range(60)}  # 20 keys per cluster


def test_same_seed_same_split_whatever_the_order_and_counts_follow_the_rule():
    rule = HoldoutRule(per_cluster=4, max_fraction=0.25, seed=7)
    held = select_holdout(ASSIGN, rule)
    assert held == select_holdout(dict(reversed(list(ASSIGN.items()))), rule)  # input order does not matter
    assert sorted(held.values()) == [0] * 4 + [1] * 4 + [2] * 4
    assert all(ASSIGN[k] == c for k, c in held.items())
    small = select_holdout(ASSIGN, HoldoutRule(per_cluster=100, max_fraction=0.1, seed=7))
    assert sorted(small.values()) == [0, 0, 1, 1, 2, 2]  # floor(0.1 * 20) = 2 per cluster
    assert select_holdout(ASSIGN, HoldoutRule(per_cluster=0)) == {}


def test_a_different_seed_selects_a_different_split():
    a = select_holdout(ASSIGN, HoldoutRule(per_cluster=4, seed=0))
    b = select_holdout(ASSIGN, HoldoutRule(per_cluster=4, seed=1))
    assert len(a) == len(b) == 12 and set(a) != set(b)


@pytest.mark.parametrize("field,value,match", [("per_cluster", -1, "holdout_per_cluster must be >= 0, got -1"),
                                               ("max_fraction", 1.0, r"holdout_max_fraction must be in \[0, 1\)"),
                                               ("seed", -2, "holdout_seed must be >= 0, got -2")])
def test_bad_rules_are_refused_in_one_line(field, value, match):
    with pytest.raises(ValueError, match=match):
        HoldoutRule(**{field: value}).validate()


def _stream_keys(store, prefix, manifest) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in sorted(manifest.outputs):
        if name.endswith(".done.json"):
            out.setdefault(name.split("/")[0], []).extend(store.read_json(f"{prefix}/{name}")["keys"])
    return out


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    store = ArtifactStore(str(tmp_path_factory.mktemp("holdout")))
    samples = shape_samples(per_group=6)  # 18 samples, 3 clusters
    embed(store, "emb", GroupEmbedder(), samples=samples, input_hash=samples_hash(samples),
          config=EmbedConfig(batch_size=8))
    cluster_stage(store, "clu", "emb", ClusterConfig(n_clusters=3, level_sizes=[6, 3], thumbnails_per_cluster=0))
    return store, samples


def test_held_out_samples_are_in_no_training_or_router_shard(clustered):
    store, samples = clustered
    config = PrepareConfig(batch_size=4, shard_size=3, holdout_per_cluster=2, holdout_max_fraction=0.4, holdout_seed=3)
    text = tiny_text()
    m = prepare_training_inputs(store, "prep", "clu", PixelSpace(16), text, samples=samples,
                                input_hash=samples_hash(samples), config=config)
    assignments = read_assignments(store, "clu")
    held = select_holdout(assignments, config.holdout())
    streams = _stream_keys(store, "prep", m)
    training = [k for s, keys in streams.items() if not s.startswith("holdout_") for k in keys]
    assert held and not set(held) & set(training)  # never trained on, never routed
    assert sorted(training) == sorted(k for k in assignments if k not in held for _ in range(2))  # cluster + router
    for c in range(3):
        assert sorted(streams[holdout_stream(c)]) == sorted(k for k, h in held.items() if h == c)
    sizes = {c: sum(1 for v in assignments.values() if v == c) for c in range(3)}
    assert m.counts["holdout"] == {str(c): min(2, int(0.4 * sizes[c])) for c in range(3)}
    assert m.counts["holdout_total"] == len(held) and m.counts["router"] == len(samples) - len(held)
    assert m.config["holdout"]["seed"] == 3 and m.config["holdout"]["per_cluster"] == 2 and m.config["holdout"]["rule"]
    # same seed: the same split and bytes; another seed: another split
    again = prepare_training_inputs(store, "prep2", "clu", PixelSpace(16), text, samples=samples,
                                    input_hash=samples_hash(samples), config=config)
    assert again.content_hash == m.content_hash
    other = PrepareConfig(batch_size=4, shard_size=3, holdout_per_cluster=2, holdout_max_fraction=0.4, holdout_seed=4)
    m3 = prepare_training_inputs(store, "prep3", "clu", PixelSpace(16), text, samples=samples,
                                 input_hash=samples_hash(samples), config=other)
    held3 = [k for s, keys in _stream_keys(store, "prep3", m3).items() if s.startswith("holdout_") for k in keys]
    assert sorted(held3) != sorted(held) and len(held3) == len(held)
