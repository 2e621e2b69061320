"""Exactly-once evaluation across a Prefect server restart (item: the event id's deduplication lives in
memory only). A real server and process worker on 127.0.0.1, stopped and started again on the same
database and artifact root: the same expert landed again is not evaluated again."""
import json
import os
import time

import pytest

from .conftest import prepared_run, wait_for

# A real server, workers and training: 5-14 min each on 2 loaded cores, above the suite default of 15 min
# once the machine is busy.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def _start(home, root, port):
    from hddm_infra.local_stack import LocalStack
    from hddm_infra.up import bootstrap, deploy

    s = LocalStack(home=home, port=port)
    s.start_server()
    bootstrap(s, gpus=1)
    deploy(s, ["evaluate"])
    s.start_worker("hddm-gpu", "once-gpu", cwd=root)
    return s


def _evaluations(client, name="evaluate/evaluate"):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    d = client.read_deployment_by_name(name)
    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id])))


def _logs(client, run_id):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return " ".join(log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))))


def test_the_same_expert_landed_after_a_server_restart_is_not_evaluated_again(tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from hddm_core.pipeline import stages
    from hddm_core.pipeline.params import RegisterExpertParams
    from hddm_infra.local_stack import free_port
    from hddm_tasks.events import ref_fields, send_landed

    root, home = str(tmp_path / "artifacts"), str(tmp_path / "prefect-home")
    params = prepared_run(root)
    expert = stages.run_train_expert(params.expert_params(0))
    landed = stages.run_register_expert(RegisterExpertParams(artifact_root=root, source=expert.uri, name="e0",
                                                             emit_event=False))
    monkeypatch.setenv("HDDM_ARTIFACT_ROOT", root)  # the workers' (and the trigger's runs') artifact root
    runs_before = []
    for session in (1, 2):  # the same PREFECT_HOME: the same database, fresh in-memory caches
        s = _start(home, root, free_port())
        try:
            with temporary_settings({PREFECT_API_URL: s.api_url}), get_client(sync_client=True) as client:
                time.sleep(10)  # the trigger service loads the deployment's trigger after the API answers
                send_landed(s.api_url, **ref_fields(landed))  # the same event id both times
                if session == 2:  # and a run asked for directly, as a trigger that fires again would ask
                    run_deployment("evaluate/evaluate", parameters={"expert_uri": landed.uri}, timeout=0)

                def new_runs():
                    return [r for r in _evaluations(client)
                            if r.parameters.get("expert_uri") and r.id not in runs_before]

                wait_for(lambda: (rs := new_runs()) and all(r.state.is_final() for r in rs), 900,
                         f"session {session}'s evaluate runs to finish")
                time.sleep(30)  # a late triggered run too
                runs = wait_for(lambda: (rs := new_runs()) and all(r.state.is_final() for r in rs) and rs, 600,
                                f"session {session}'s late evaluate runs to finish")
                assert all(r.state.is_completed() for r in runs), [(r.state.type, r.state.message) for r in runs]
                logs = {r.id: _logs(client, r.id) for r in runs}
                if session == 1:
                    (first,) = [r.id for r in runs]
                    assert "claimed evaluation" in logs[first]
                else:
                    assert all("already evaluated" in text and str(first) in text for text in logs.values()), logs
                runs_before += [r.id for r in runs]
        finally:
            s.stop()
    claims = os.path.join(root, "claims", "evaluate")
    (key,) = os.listdir(claims)
    assert sorted(os.listdir(os.path.join(claims, key))) == ["attempt-0001.json", "done.json"]
    assert json.load(open(os.path.join(claims, key, "done.json")))["flow_run_id"] == str(first)
    assert len([d for d in os.listdir(os.path.join(root, "evaluations")) if d != "references"]) == 1
