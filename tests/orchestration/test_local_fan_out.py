"""Experts trained concurrently in processes (hddm_flows.local_fan_out): the same weights as one after the
other, each as its own task run with its own progress on the parent's Prefect API, and a failed cluster
named without losing the others."""
import os
import shutil

import pytest

from hddm_core.pipeline.params import PipelineParams, TrainExpertParams, TrainingParams
from hddm_flows.local_fan_out import trainer_count
from tests.orchestration.conftest import prepared_run


def _jobs(n, device="cpu"):
    return [TrainExpertParams(cluster_id=c, training=TrainingParams(device=device)) for c in range(n)]


def test_trainer_count():
    assert trainer_count(None, _jobs(64)) == os.cpu_count()  # one per core on the CPU
    assert trainer_count(None, _jobs(1)) == 1  # never more than there are jobs
    assert trainer_count(3, _jobs(2)) == 2 and trainer_count(3, _jobs(8)) == 3 and trainer_count(1, _jobs(8)) == 1
    assert trainer_count(None, _jobs(4, device="cuda")) == 1  # processes would share one GPU's memory
    assert trainer_count(2, _jobs(4, device="cuda")) == 2  # unless asked for
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match=f"local_trainers must be a whole number >= 1 or None, got {bad!r}"):
            trainer_count(bad, _jobs(2))


def test_local_trainers_field_is_validated():
    assert PipelineParams().local_trainers is None and PipelineParams(local_trainers=3).local_trainers == 3
    with pytest.raises(ValueError, match="local_trainers"):
        PipelineParams(local_trainers=0)


def _path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _weights(uri):
    from hddm_core.checkpoints import load_expert

    return load_expert(_path(uri)).model.state_dict()


def _run_names_and_progress():
    """Task-run names and progress-artifact keys on the API (the session's harness)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = {r.name for r in client.read_task_runs()}
        keys = {a.key for a in client.read_artifacts() if a.type == "progress"}
    return runs, keys


@pytest.mark.slow  # 1-2 min on 2 shared cores: two trainings, and each trainer process imports torch
def test_concurrent_training_gives_the_sequential_weights(tmp_path, prefect_harness):
    from hddm_flows.local_fan_out import train_experts_locally

    params = prepared_run(str(tmp_path / "seq"))
    shutil.copytree(tmp_path / "seq", tmp_path / "conc")  # the same prepared data, trained again from scratch
    seq_jobs = [params.expert_params(c) for c in range(2)]
    conc_jobs = [j.model_copy(update={"artifact_root": str(tmp_path / "conc")}) for j in seq_jobs]
    sequential = train_experts_locally(seq_jobs, local_trainers=1)
    concurrent = train_experts_locally(conc_jobs, local_trainers=2)
    assert [r.extra["cluster_id"] for r in concurrent] == [0, 1]
    assert all(str(tmp_path / "conc") in r.uri for r in concurrent)
    for s, c in zip(sequential, concurrent):
        ws, wc = _weights(s.uri), _weights(c.uri)
        assert ws.keys() == wc.keys()
        assert all(ws[k].equal(wc[k]) for k in ws), f"cluster {s.extra['cluster_id']}: weights differ"
        assert s.content_hash == c.content_hash
    runs, keys = _run_names_and_progress()
    assert {f"train-expert-cluster-{j.cluster_id}-{j.objective}" for j in conc_jobs} <= runs  # on this API
    assert {"train-expert-cluster-0", "train-expert-cluster-1"} <= keys


@pytest.mark.slow  # 50-100 s on 2 shared cores
def test_a_failed_cluster_is_named_and_the_others_are_kept(tmp_path, prefect_harness):
    from hddm_flows.fan_out import recorded_expert
    from hddm_flows.local_fan_out import train_experts_locally

    params = prepared_run(str(tmp_path))
    good, missing = params.expert_params(0), params.expert_params(0).model_copy(update={"cluster_id": 7})
    with pytest.raises(Exception, match=r"expert training did not complete: cluster 7 \(ddpm-eps\): FAILED.*"
                                        r"Clusters \[0\] finished"):
        train_experts_locally([missing, good], local_trainers=2)
    kept = recorded_expert(good)  # the finished expert is recorded: a rerun reuses it
    assert kept.extra["cluster_id"] == 0 and os.path.exists(_path(kept.uri))


def test_only_the_experts_not_trained_yet_go_to_the_pool(monkeypatch):
    """A finished expert is reused in this process; the pool gets the rest, results in job order; with
    one expert left to train nothing is spawned."""
    from hddm_core.pipeline import stages
    from hddm_flows import local_fan_out

    jobs, recorded = _jobs(4), {0, 2}
    in_process, pooled = [], []

    class FakePool:  # stands in for the train-experts-in-processes flow
        def with_options(self, task_runner):
            assert task_runner._max_workers == 2
            return lambda js: pooled.append([j.cluster_id for j in js]) or [f"pool-{j.cluster_id}" for j in js]

    monkeypatch.setattr(stages, "recorded_ref", lambda stage, job: "ref" if job.cluster_id in recorded else None)
    monkeypatch.setattr(local_fan_out.stage_flows, "train_expert",
                        lambda job: in_process.append(job.cluster_id) or f"here-{job.cluster_id}")
    monkeypatch.setattr(local_fan_out, "train_experts", FakePool())
    monkeypatch.setattr(local_fan_out, "api_url", lambda: "http://127.0.0.1:1/api")
    assert local_fan_out.train_experts_locally(jobs, 4) == ["here-0", "pool-1", "here-2", "pool-3"]
    assert in_process == [0, 2] and pooled == [[1, 3]]
    in_process.clear()
    recorded = {0, 1, 2}
    assert local_fan_out.train_experts_locally(jobs, 4) == ["here-0", "here-1", "here-2", "here-3"]
    assert in_process == [0, 1, 2, 3] and pooled == [[1, 3]]  # the last one trained here, no pool
    forced = [j.model_copy(update={"force": True}) for j in jobs]
    assert local_fan_out.train_experts_locally(forced, 2) == [f"pool-{c}" for c in range(4)]  # force retrains all
