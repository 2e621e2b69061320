"""Tasks through .fn: registration and its event (artifacts need the session's Prefect server: slow),
transient retries, cache keys, the summary cards the tasks hand to Prefect (recorded, and once through
the session's server)."""
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


@pytest.fixture
def artifacts(monkeypatch):
    """Every artifact the tasks create: (kind, key, content)."""
    import hddm_tasks.common as tc
    import hddm_tasks.data as td
    import hddm_tasks.experts as tx
    import hddm_tasks.training as tt

    made = []
    monkeypatch.setattr(tc, "create_markdown_artifact", lambda md, key, description: made.append(("markdown", key, md)))
    monkeypatch.setattr(tc, "create_link_artifact", lambda url, link_text, key: made.append(("link", key, url)))
    for module in (td, tx, tt):
        monkeypatch.setattr(module, "create_table_artifact",
                            lambda rows, key, description: made.append(("table", key, rows)), raising=False)
    for module in (tx, tt):
        monkeypatch.setattr(module, "Progress", lambda key, description: None)
    return made


def _png(width=300, height=200) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (0, 128, 255)).save(buf, format="PNG")
    return buf.getvalue()


def _inline_pictures(markdown: str) -> list[str]:
    import base64
    import io
    import re

    from PIL import Image

    found = re.findall(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    for _, b64 in found:
        Image.open(io.BytesIO(base64.b64decode(b64))).verify()  # a picture the browser can show
    return [alt for alt, _ in found]


def test_evaluate_task_shows_metrics_and_pictures_inline_not_a_file_link(tmp_path, artifacts, monkeypatch):
    from hddm_core.pipeline.params import EvaluateParams
    from hddm_core.storage import ArtifactStore
    from hddm_tasks import experts

    store = ArtifactStore(str(tmp_path))
    store.write_bytes("evaluations/abc/grids/top-1.png", _png())
    store.write_bytes("evaluations/abc/report.md", b"# report\n")
    ref = stages.StageRef(stage="evaluate", uri=store.uri("evaluations/abc"), prefix="evaluations/abc",
                          content_hash="h", key="abc", counts={"experts": 2},
                          extra={"report": store.uri("evaluations/abc/report.md"),
                                 "metrics": {"top-1": {"FD": 1.5}}})
    monkeypatch.setattr(experts.stages, "run_evaluate", lambda params, progress=None: ref)
    experts.evaluate.fn(EvaluateParams(artifact_root=str(tmp_path)))
    kinds = {(kind, key) for kind, key, _ in artifacts}
    assert kinds == {("table", "evaluation-metrics-abc"), ("markdown", "evaluation-report-abc")}  # no file:// link
    [card] = [md for kind, _, md in artifacts if kind == "markdown"]
    assert "| top-1 | 1.5 |" in card and _inline_pictures(card) == ["samples: top-1"]


def test_training_and_cluster_tasks_make_cards(tmp_path, artifacts, monkeypatch):
    from hddm_core.pipeline.params import ClusterParams
    from hddm_core.storage import ArtifactStore
    from hddm_tasks import data, training

    store = ArtifactStore(str(tmp_path))
    store.write_bytes("runs/x/expert/loss_curve.png", _png())
    ref = stages.StageRef(stage="train-expert", uri=store.uri("runs/x/expert"), prefix="runs/x/expert",
                          content_hash="h", key="k1", counts={"steps": 4, "samples": 8, "final_loss": 0.5},
                          extra={"cluster_id": 1, "objective": "ddpm-eps",
                                 "loss_curve": store.uri("runs/x/expert/loss_curve.png")})
    monkeypatch.setattr(training.stages, "run_train_expert", lambda params, progress=None: ref)
    training.train_expert.fn(TrainExpertParams(artifact_root=str(tmp_path), cluster_id=1, objective="ddpm-eps"))
    [(kind, key, card)] = artifacts
    assert (kind, key) == ("markdown", "loss-curve-cluster-1-ddpm-eps-k1")
    assert "0.5" in card and _inline_pictures(card) == ["training loss"]

    artifacts.clear()
    store.write_bytes("cluster/clusters.png", _png())
    store.write_bytes("cluster/report.md", b"# Cluster report\n")
    cref = stages.StageRef(stage="cluster", uri=store.uri("cluster"), prefix="cluster", content_hash="h", key="k2",
                           counts={"sizes": [3, 4]}, extra={"picture": "https://store.example/cluster/clusters.png"})
    monkeypatch.setattr(data.stages, "run_cluster", lambda params: cref)
    data.cluster.fn(ClusterParams(artifact_root=str(tmp_path)))
    assert [(kind, key) for kind, key, _ in artifacts] == [
        ("markdown", "cluster-report-k2"), ("table", "cluster-sizes-k2"), ("link", "cluster-grid-k2")]  # http: linked
    assert _inline_pictures(artifacts[0][2]) == ["cluster grid: sample images per cluster"]


def test_a_card_that_cannot_be_built_says_why_and_the_task_still_succeeds(artifacts):
    def broken() -> str:
        raise KeyError("metrics")

    common.summary_card(broken, key="evaluation-report-x", description="d")
    assert artifacts == [("markdown", "evaluation-report-x",
                          "The summary of this result could not be built: KeyError: 'metrics'")]


@pytest.mark.slow
def test_a_card_reaches_the_prefect_server_whole(tmp_path, prefect_harness):
    """The markdown artifact the server stores holds the inline picture (no size limit cuts it)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from hddm_core.pipeline.stage_cards import expert_card
    from hddm_core.storage import ArtifactStore

    store = ArtifactStore(str(tmp_path))
    store.write_bytes("e/loss_curve.png", _png(900, 600))
    ref = stages.StageRef(stage="train-expert", uri=store.uri("e"), prefix="e", content_hash="h",
                          counts={"final_loss": 0.25}, extra={"cluster_id": 0, "objective": "flow-matching"})
    card = expert_card(store, ref)

    @flow
    def make_card():
        common.summary_card(lambda: card, key="loss-curve-test", description="test")

    make_card()
    with get_client(sync_client=True) as client:
        only = ArtifactFilter(key=ArtifactFilterKey(any_=["loss-curve-test"]))
        [stored] = client.read_artifacts(artifact_filter=only)
    assert stored.type == "markdown" and stored.data == card and _inline_pictures(stored.data) == ["training loss"]
