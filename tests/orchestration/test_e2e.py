"""End to end against a real local Prefect server and process workers on 127.0.0.1: bootstrap, deploy
from prefect.yaml, run the pipeline deployment (experts fan out as train-expert runs on hddm-gpu),
then check the expert-landed trigger: one evaluation per expert even when the event is emitted again
(within this server session; across a restart: test_e2e_once.py)."""
import os
import time

import pytest

from .conftest import tiny_params

# A real server, workers and training: 5-14 min each on 2 loaded cores, above the suite default of 15 min
# once the machine is busy.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from hddm_infra.local_stack import LocalStack, free_port
    from hddm_infra.up import bootstrap, deploy

    home = str(tmp_path_factory.mktemp("prefect-home"))
    root = str(tmp_path_factory.mktemp("artifacts"))
    s = LocalStack(home=home, port=free_port())
    # workers (and their flow-run processes) inherit the artifact root for runs whose parameters leave
    # it empty (the trigger's evaluations); they run in a bare folder: flow code comes from the installed
    # package (module-path entrypoints, no pull step), never from the working directory
    os.environ["HDDM_ARTIFACT_ROOT"] = root
    bare = str(tmp_path_factory.mktemp("worker-cwd"))
    try:
        s.start_server()
        bootstrap(s, gpus=1)
        deploy(s, ["pipeline", "train-expert", "train-router", "evaluate", "register-expert"])
        s.start_worker("hddm-cpu", "test-cpu", cwd=bare)
        s.start_worker("hddm-gpu", "test-gpu", cwd=bare)
        yield s, root
    finally:
        s.stop()  # by pid: SIGINT, then SIGKILL
        os.environ.pop("HDDM_ARTIFACT_ROOT", None)


def _api(stack_):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: stack_.api_url})


def _evaluate_runs(client, deployment_id):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return [r for r in runs if r.parameters.get("expert_uri")]  # triggered ones (not the nightly schedule's)


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_pipeline_deployment_and_exactly_once_evaluation(stack):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from hddm_tasks.events import send_landed

    s, root = stack
    params = tiny_params(root, train_deployment="train-expert/train-expert")
    with _api(s):
        run = run_deployment("pipeline/pipeline", parameters={"params": params.model_dump(mode="json")}, timeout=900)
        assert run.state.is_completed(), f"{run.state.type}: {run.state.message}"
        with get_client(sync_client=True) as client:
            children = client.read_flow_runs()
            trains = [r for r in children if r.name and r.deployment_id and r.parent_task_run_id
                      and client.read_deployment(r.deployment_id).name == "train-expert"]
            assert len(trains) == 2 and all(r.state.is_completed() for r in trains)
            evaluate = client.read_deployment_by_name("evaluate/evaluate")
            # the pipeline registered 2 experts -> 2 landed events -> 2 evaluations, one per expert
            runs = _wait(lambda: (r := _evaluate_runs(client, evaluate.id)) and len(r) >= 2
                         and all(x.state.is_final() for x in r) and r, 600, "the triggered evaluations")
            uris = sorted(r.parameters["expert_uri"] for r in runs)
            assert len(uris) == 2 and len(set(uris)) == 2
            assert all(r.state.is_completed() for r in runs), [r.state.message for r in runs]
            # the same landing announced twice more: within one server session Prefect drops the repeated
            # event id (in memory); across restarts the evaluation's own record holds (test_e2e_once.py)
            registry = os.path.join(root, "experts", "registry")
            folder = os.path.join(registry, sorted(os.listdir(registry))[0])
            import json

            sha = json.load(open(os.path.join(folder, "expert.json")))["weights_sha256"]
            uri = next(u for u in uris if u.endswith(os.path.basename(folder)))
            for _ in range(2):  # delivered (confirmed by the server) twice, under the same event id
                send_landed(s.api_url, expert_uri=uri, weights_sha256=sha,
                            prefix=f"experts/registry/{os.path.basename(folder)}")
            time.sleep(20)  # longer than the trigger service needs to act on a new event
            runs = _evaluate_runs(client, evaluate.id)
            assert sorted(r.parameters["expert_uri"] for r in runs) == uris, "a repeated landing evaluated again"
    evaluations = [d for d in os.listdir(os.path.join(root, "evaluations")) if d != "references"]
    assert len(evaluations) == 3  # the pipeline's ensemble evaluation + one per landed expert
