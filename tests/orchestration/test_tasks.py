"""Tasks through .fn: registration and its event (artifacts need the session's Prefect server: slow),
transient retries, cache keys."""
import os
import uuid

import pytest

from hddm_core.pipeline import stages
from hddm_core.pipeline.params import RegisterExpertParams, TrainExpertParams
from hddm_tasks import common
from hddm_tasks.events import landed_event_id

from .conftest import tiny_expert as _tiny_expert


@pytest.fixture
def events(monkeypatch):
    """Every hddm.expert.landed the one emitter (hddm_tasks.events) sends."""
    sent = []
    import hddm_tasks.events as te

    monkeypatch.setattr(te, "emit_event", lambda event, **kw: sent.append((event, kw)))
    return sent


@pytest.mark.slow
def test_register_validates_stores_and_emits_a_deterministic_event(tmp_path, events, prefect_harness):
    from hddm_tasks.experts import register_expert

    src = _tiny_expert(tmp_path / "contrib")
    root = str(tmp_path / "store")
    params = RegisterExpertParams(artifact_root=root, source=src, name="cluster-001-fm")
    ref = register_expert.fn(params)
    assert os.path.exists(os.path.join(root, "experts/registry/cluster-001-fm/expert.json"))
    assert any("smoke-forward" in c for c in ref.counts["checks"])
    again = register_expert.fn(params)  # same weights: nothing rewritten, same event id
    assert again.reused and again.content_hash == ref.content_hash
    assert [e[0] for e in events] == ["hddm.expert.landed"] * 2
    ids = {e[1]["id"] for e in events}
    assert ids == {uuid.UUID(landed_event_id(ref.content_hash))}
    assert events[0][1]["payload"]["expert_uri"] == ref.uri


@pytest.mark.slow
def test_register_rejects_corrupted_and_pickled_weights(tmp_path, events, prefect_harness):
    from hddm_core.checkpoints import PickleRefused
    from hddm_tasks.experts import register_expert

    src = _tiny_expert(tmp_path / "contrib")
    weights = next(f for f in os.listdir(src) if f.endswith(".safetensors"))
    with open(os.path.join(src, weights), "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)  # hash no longer matches
    with pytest.raises(ValueError, match="rejected"):
        register_expert.fn(RegisterExpertParams(artifact_root=str(tmp_path / "s"), source=src, name="bad"))
    pkl = tmp_path / "evil" / "model.pt"
    pkl.parent.mkdir()
    pkl.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(PickleRefused):
        register_expert.fn(RegisterExpertParams(artifact_root=str(tmp_path / "s"), source=str(pkl), name="evil"))
    assert not os.path.exists(tmp_path / "s" / "experts" / "registry" / "bad")
    assert events == []


def test_transient_errors_only_are_retried():
    import errno

    assert common.is_transient(ConnectionResetError())
    assert common.is_transient(TimeoutError())
    assert common.is_transient(OSError(errno.ECONNRESET, "reset"))
    wrapped = RuntimeError("upload failed")
    wrapped.__cause__ = ConnectionError("peer gone")
    assert common.is_transient(wrapped)
    assert not common.is_transient(ValueError("bad expert"))
    assert not common.is_transient(FileNotFoundError("missing manifest"))
    assert not common.is_transient(RuntimeError("NaN loss"))


def test_cache_key_is_content_addressed(tmp_path):
    """Stage keys: config + input content hashes (force and the root are not config); Prefect cache
    keys exist only while the store holds the finished result under that key."""
    from hddm_core.manifests import StageManifest, hash_config, write_manifest
    from hddm_core.pipeline.params import ClusterParams
    from hddm_core.storage import ArtifactStore

    root = str(tmp_path)
    p = TrainExpertParams(artifact_root=root, cluster_id=0)
    assert stages.stage_key("train-expert", p) is None  # no prepared data yet: nothing to reuse
    store = ArtifactStore(root)
    write_manifest(store, "prepare", StageManifest("prepare", {}, hash_config({}), {}, {}))
    k1 = stages.stage_key("train-expert", p)
    assert k1 and k1 == stages.stage_key("train-expert", p.model_copy(update={"force": True}))
    assert k1 != stages.stage_key("train-expert", p.model_copy(update={"cluster_id": 1}))
    write_manifest(store, "prepare", StageManifest("prepare", {"x": 1}, hash_config({"x": 1}), {}, {}))
    assert stages.stage_key("train-expert", p) != k1  # new input content: new key

    key_fn = common.cache_key("cluster")
    c = ClusterParams(artifact_root=root)
    write_manifest(store, "embed", StageManifest("embed", {}, hash_config({}), {}, {}))
    assert key_fn(None, {"params": c}) is None  # inputs exist but the stage has not finished here
    m = write_manifest(store, "cluster", StageManifest("cluster", {}, hash_config({}), {}, {}))
    del m
    ref = stages.StageRef(stage="cluster", uri=store.uri("cluster"), prefix="cluster",
                          content_hash=stages.read_manifest(store, "cluster").content_hash)
    stages.remember(store, "cluster", stages.stage_key("cluster", c), ref)
    k = key_fn(None, {"params": c})
    assert k and k.startswith("hddm-cluster-")
    assert key_fn(None, {"params": c.model_copy(update={"force": True})}) is None  # force: recompute
    other = ArtifactStore(str(tmp_path / "elsewhere"))
    assert key_fn(None, {"params": c.model_copy(update={"artifact_root": other.root})}) is None
    store.delete("cluster/_manifest.json")
    assert key_fn(None, {"params": c}) is None  # outputs gone: no cache hit
