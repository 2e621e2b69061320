"""Fan-out over a deployment: the parent flow reads each finished run's result back from the store and
never trains itself (a missing record is an error naming where it was expected)."""
import contextlib
import uuid
from types import SimpleNamespace

import pytest

from hddm_core.manifests import StageManifest, hash_config, write_manifest
from hddm_core.pipeline import stages
from hddm_core.pipeline.params import TrainExpertParams
from hddm_core.storage import ArtifactStore
from hddm_flows import fan_out


@pytest.fixture
def never_train(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the parent flow trained an expert")

    monkeypatch.setattr(stages, "run_train_expert", refuse)


def _prepared(root) -> ArtifactStore:
    store = ArtifactStore(str(root))
    write_manifest(store, "prepare", StageManifest("prepare", {}, hash_config({}), {}, {}))
    return store


def _record(store: ArtifactStore, params: TrainExpertParams, sha: str = "ab" * 32) -> stages.StageRef:
    """What a finished train-expert run leaves: the exported manifest and its recorded StageRef."""
    key = stages.stage_key("train-expert", params)
    run = stages.expert_run_prefix(params, key)
    store.write_json(f"{run}/expert/expert.json", {"weights_sha256": sha})
    ref = stages.StageRef(stage="train-expert", uri=store.uri(f"{run}/expert"), prefix=f"{run}/expert",
                          content_hash=sha, extra={"cluster_id": params.cluster_id, "objective": params.objective})
    return stages.remember(store, run, key, ref)


def test_recorded_expert_reads_back_what_the_run_recorded(tmp_path, never_train):
    store = _prepared(tmp_path)
    p = TrainExpertParams(artifact_root=str(tmp_path), cluster_id=3, objective="ddpm-eps")
    recorded = _record(store, p)
    assert fan_out.recorded_expert(p) == recorded
    assert fan_out.recorded_expert(p.model_copy(update={"force": True})) == recorded  # a forced job records too


def test_recorded_expert_raises_instead_of_training(tmp_path, never_train):
    p = TrainExpertParams(artifact_root=str(tmp_path), cluster_id=1)
    with pytest.raises(LookupError, match="cluster 1: the prepare stage .* has no manifest"):
        fan_out.recorded_expert(p)
    store = _prepared(tmp_path)
    with pytest.raises(LookupError, match=r"no recorded expert for cluster 1 \(flow-matching\) at .*_ref\.json"):
        fan_out.recorded_expert(p)
    _record(store, p.model_copy(update={"cluster_id": 2}))  # another cluster's record is not this one
    with pytest.raises(LookupError, match="cluster 1"):
        fan_out.recorded_expert(p)
    recorded = _record(store, p)
    store.write_json(f"{recorded.prefix}/expert.json", {"weights_sha256": "cd" * 32})  # weights replaced since
    with pytest.raises(LookupError, match="weights it names changed"):
        fan_out.recorded_expert(p)


def _fake_prefect(monkeypatch, final_state):
    """run_deployment and the API client of fan_out, every run ending in `final_state` (called with the
    run's index in the order runs were started)."""
    started, ids = [], []

    def run_deployment(name, parameters, timeout, as_subflow, flow_run_name, tags):
        started.append((name, parameters["params"]["cluster_id"]))
        ids.append(uuid.uuid4())
        assert f"cluster-{parameters['params']['cluster_id']}" in tags and flow_run_name.startswith("train-expert-")
        return SimpleNamespace(id=ids[-1])

    client = SimpleNamespace(read_flow_run=lambda run_id: SimpleNamespace(state=final_state(ids.index(run_id))))
    monkeypatch.setattr(fan_out, "run_deployment", run_deployment)
    monkeypatch.setattr(fan_out, "get_client", lambda sync_client: contextlib.nullcontext(client))
    return started


def test_run_deployments_returns_the_recorded_refs_and_never_trains(tmp_path, monkeypatch, never_train):
    from prefect.states import Completed

    store = _prepared(tmp_path)
    jobs = [TrainExpertParams(artifact_root=str(tmp_path), cluster_id=c) for c in range(2)]
    recorded = [_record(store, j, sha=f"{c:02d}" * 32) for c, j in enumerate(jobs)]
    started = _fake_prefect(monkeypatch, lambda i: Completed())
    assert fan_out.run_deployments("train-expert/train-expert", jobs, poll_s=0) == recorded
    assert started == [("train-expert/train-expert", 0), ("train-expert/train-expert", 1)]


def test_run_deployments_fails_when_a_completed_run_recorded_nothing(tmp_path, monkeypatch, never_train):
    from prefect.states import Completed

    store = _prepared(tmp_path)
    jobs = [TrainExpertParams(artifact_root=str(tmp_path), cluster_id=c) for c in range(2)]
    _record(store, jobs[0])
    _fake_prefect(monkeypatch, lambda i: Completed())
    with pytest.raises(LookupError, match="no recorded expert for cluster 1"):
        fan_out.run_deployments("train-expert/train-expert", jobs, poll_s=0)


def test_run_deployments_names_the_runs_that_failed(tmp_path, monkeypatch, never_train):
    from prefect.states import Failed

    jobs = [TrainExpertParams(artifact_root=str(tmp_path), cluster_id=4)]
    _fake_prefect(monkeypatch, lambda i: Failed(message="CUDA out of memory"))
    with pytest.raises(RuntimeError, match="cluster 4: FAILED CUDA out of memory"):
        fan_out.run_deployments("train-expert/train-expert", jobs, poll_s=0)


def test_a_crashed_run_is_resubmitted_with_the_same_parameters_a_bounded_number_of_times(tmp_path, monkeypatch,
                                                                                       never_train):
    from prefect.states import Completed, Crashed

    store = _prepared(tmp_path)
    jobs = [TrainExpertParams(artifact_root=str(tmp_path), cluster_id=c) for c in range(2)]
    recorded = [_record(store, j, sha=f"{c:02d}" * 32) for c, j in enumerate(jobs)]
    # run 1 (cluster 1) crashes once; its resubmission (run 2) completes
    started = _fake_prefect(monkeypatch, lambda i: Crashed(message="killed") if i == 1 else Completed())
    assert fan_out.run_deployments("train-expert/train-expert", jobs, poll_s=0) == recorded
    assert [c for _, c in started] == [0, 1, 1]
    # always crashing: given up after max_resubmits, and the message says so
    started = _fake_prefect(monkeypatch, lambda i: Crashed(message="killed"))
    with pytest.raises(RuntimeError, match=r"cluster 0: CRASHED killed \(after 2 resubmissions\)"):
        fan_out.run_deployments("train-expert/train-expert", jobs[:1], poll_s=0, max_resubmits=2)
    assert [c for _, c in started] == [0, 0, 0]
    with pytest.raises(ValueError, match="max_resubmits must be >= 0, got -1"):
        fan_out.run_deployments("train-expert/train-expert", jobs, poll_s=0, max_resubmits=-1)
