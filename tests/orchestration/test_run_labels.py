"""Flow run names and tags (hddm_flows.run_labels): stage, cluster and objective where they apply, the
same vocabulary for fanned-out, in-process and trigger-started runs."""
import uuid

import pytest

from hddm_core.pipeline.params import (ClusterParams, EvaluateParams, RegisterExpertParams, TrainExpertParams,
                                       TrainMonolithParams)
from hddm_flows import run_labels as rl

from .conftest import tiny_expert


def test_train_expert_runs_say_cluster_and_objective_as_model_or_json(tmp_path):
    p = TrainExpertParams(artifact_root=str(tmp_path), cluster_id=3, objective="ddpm-eps")
    want = {"flow_run_name": "train-expert-cluster-3-ddpm-eps",
            "tags": ["hddm", "train-expert", "cluster-3", "ddpm-eps"]}
    assert rl.stage_labels("train-expert", {"params": p}) == want
    assert rl.stage_labels("train-expert", {"params": p.model_dump(mode="json")}) == want  # a deployment's JSON


def test_fan_out_names_are_the_same_vocabulary(tmp_path):
    from hddm_flows.fan_out import run_labels

    job = TrainExpertParams(artifact_root=str(tmp_path), cluster_id=5, objective="flow-matching")
    assert run_labels(job) == rl.stage_labels("train-expert", {"params": job})
    assert run_labels(job, 2)["flow_run_name"] == "train-expert-cluster-5-flow-matching-resume-2"


def test_other_stages(tmp_path):
    root = str(tmp_path)
    assert rl.stage_labels("cluster", {"params": ClusterParams(artifact_root=root)}) == {
        "flow_run_name": "cluster", "tags": ["hddm", "cluster"]}
    mono = rl.stage_labels("train-monolith", {"params": TrainMonolithParams(artifact_root=root, cluster_id=2)})
    assert mono == {"flow_run_name": "train-monolith-flow-matching",  # trains on every cluster: no cluster tag
                    "tags": ["hddm", "train-monolith", "flow-matching"]}
    reg = RegisterExpertParams(artifact_root=root, source=root, name="cluster-001-fm")
    assert rl.stage_labels("register-expert", {"params": reg})["flow_run_name"] == "register-expert-cluster-001-fm"
    two = EvaluateParams(artifact_root=root, experts=["a", "b"])
    assert rl.stage_labels("evaluate", {"params": two, "expert_uri": None})["flow_run_name"] == "evaluate-2-experts"
    assert rl.stage_labels("evaluate", {"params": EvaluateParams(artifact_root=root)})["flow_run_name"] == \
        "evaluate-registered-experts"


def test_a_landed_expert_evaluation_reads_cluster_and_objective_from_the_expert(tmp_path):
    uri = tiny_expert(tmp_path / "e", objective="ddpm-eps", cluster_id=2)
    got = rl.stage_labels("evaluate", {"params": EvaluateParams(artifact_root=str(tmp_path)), "expert_uri": uri})
    assert got == {"flow_run_name": "evaluate-cluster-2-ddpm-eps-landed",
                   "tags": ["hddm", "evaluate", "cluster-2", "ddpm-eps", "landed"]}
    missing = rl.stage_labels("evaluate", {"params": None, "expert_uri": str(tmp_path / "nowhere")})
    assert missing == {"flow_run_name": "evaluate-landed", "tags": ["hddm", "evaluate", "landed"]}


@pytest.fixture
def runtime(monkeypatch):
    """prefect.runtime.flow_run's fields, set by the test."""
    from prefect.runtime import flow_run

    fields = {}
    for name in ("id", "name", "parameters", "tags"):
        monkeypatch.setitem(flow_run.FIELDS, name, lambda name=name: fields.get(name))
    return fields


def test_the_flow_run_name_callable_reads_the_runs_parameters(tmp_path, runtime):
    name = rl.run_name("train-expert")
    runtime.update(parameters={"params": TrainExpertParams(artifact_root=str(tmp_path), cluster_id=1)},
                   name="crafty-lemur")
    assert name() == "train-expert-cluster-1-flow-matching"
    runtime["name"] = "train-expert-cluster-1-flow-matching-resume-1"  # given by the fan-out: kept
    assert name() == "train-expert-cluster-1-flow-matching-resume-1"


def test_a_stage_flow_tags_its_own_run(tmp_path, runtime, monkeypatch):
    import prefect.client.orchestration as orchestration

    updates = []

    class Client:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update_flow_run(self, flow_run_id, tags):
            updates.append((flow_run_id, tags))

    monkeypatch.setattr(orchestration, "get_client", lambda sync_client: Client())
    params = TrainExpertParams(artifact_root=str(tmp_path), cluster_id=4, objective="ddpm-eps")
    rl.tag_run("train-expert", params=params)
    assert updates == []  # not in a flow run: nothing to tag
    run_id = uuid.uuid4()
    runtime.update(id=str(run_id), tags=["hddm", "nightly"])
    rl.tag_run("train-expert", params=params)
    assert updates == [(run_id, ["hddm", "nightly", "train-expert", "cluster-4", "ddpm-eps"])]
    runtime["tags"] = updates[-1][1]
    rl.tag_run("train-expert", params=params)
    assert len(updates) == 1  # already tagged: no call


@pytest.mark.slow
def test_a_trigger_started_evaluation_run_is_named_and_tagged(tmp_path, prefect_harness, monkeypatch):
    """The evaluate flow as the hddm.expert.landed trigger calls it (expert_uri only): Prefect names the
    run with our callable and the flow tags it."""
    from prefect.client.orchestration import get_client

    import hddm_flows.stages as stage_flows
    from hddm_core.pipeline.reuse import StageRef

    uri = tiny_expert(tmp_path / "e", objective="ddpm-eps", cluster_id=2)
    seen = {}

    def evaluate_once(params):
        from prefect.runtime import flow_run

        seen["id"] = flow_run.id
        return StageRef(stage="evaluate", uri="u", prefix="p", content_hash="h", extra={"report": "r"})

    monkeypatch.setattr(stage_flows.experts, "evaluate_once", evaluate_once)
    stage_flows.evaluate(params=EvaluateParams(artifact_root=str(tmp_path)), expert_uri=uri)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(seen["id"]))
    assert run.name == "evaluate-cluster-2-ddpm-eps-landed"
    assert {"hddm", "evaluate", "cluster-2", "ddpm-eps", "landed"} <= set(run.tags)
