"""The shared stage opening (hddm_core.pipeline.reuse.open_stage): key, reuse, remember, force."""
from __future__ import annotations

import pytest

from hddm_core.manifests import StageManifest, hash_config, read_manifest, write_manifest
from hddm_core.pipeline import stages
from hddm_core.pipeline.params import ClusterParams, TrainExpertParams
from hddm_core.pipeline.reuse import REF_NAME, StageRef, open_stage
from hddm_core.storage import ArtifactStore


def _manifest(store, prefix, config):
    write_manifest(store, prefix, StageManifest(prefix, config, hash_config(config), {}, {}))
    return read_manifest(store, prefix)


def test_training_without_prepared_data_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no prepare manifest under .*prepare: run prepare first"):
        open_stage("train-expert", TrainExpertParams(artifact_root=str(tmp_path)))


def test_a_remembered_training_run_is_reused_until_forced(tmp_path):
    store = ArtifactStore(str(tmp_path))
    _manifest(store, "prepare", {})
    p = TrainExpertParams(artifact_root=str(tmp_path), cluster_id=2)
    st = open_stage("train-expert", p)
    assert st.reused is None and st.key == stages.stage_key("train-expert", p)
    assert st.prefix == stages.expert_run_prefix(p, st.key) and st.prefix.startswith("experts/runs/cluster-002-")
    store.write_json(f"{st.prefix}/expert/expert.json", {"weights_sha256": "w1"})
    ref = st.remember(StageRef(stage="train-expert", uri=store.uri(st.prefix), prefix=f"{st.prefix}/expert",
                               content_hash="w1"))
    assert ref.key == st.key and store.exists(f"{st.prefix}/{REF_NAME}")

    again = open_stage("train-expert", p)
    assert again.reused is not None and again.reused.reused and again.reused.content_hash == "w1"
    store.write_json(f"{st.prefix}/expert/expert.json", {"weights_sha256": "changed"})
    assert open_stage("train-expert", p).reused is None  # the exported weights changed: recompute
    forced = open_stage("train-expert", p.model_copy(update={"force": True}))
    assert forced.reused is None and not store.exists(f"{st.prefix}/expert/expert.json")  # run starts from scratch


def test_a_data_stage_is_reused_only_while_its_outputs_are_unchanged(tmp_path):
    store = ArtifactStore(str(tmp_path))
    _manifest(store, "embed", {})
    c = ClusterParams(artifact_root=str(tmp_path))
    st = open_stage("cluster", c)
    assert st.reused is None and st.prefix == "cluster"
    m = _manifest(store, "cluster", {"k": 4})
    st.remember(StageRef(stage="cluster", uri=store.uri("cluster"), prefix="cluster", content_hash=m.content_hash))
    assert open_stage("cluster", c).reused.content_hash == m.content_hash
    assert open_stage("cluster", c.model_copy(update={"force": True})).reused is None
    assert store.exists("cluster/_manifest.json")  # force never wipes a data stage's prefix
    _manifest(store, "cluster", {"k": 5})
    assert open_stage("cluster", c).reused is None
