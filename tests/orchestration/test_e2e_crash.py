"""Crash recovery against a real Prefect server and process worker on 127.0.0.1: the train-expert run's
process is killed (SIGKILL) after its first checkpoint; the fan-out submits the job again, and the new
run resumes from that checkpoint and completes the expert, without a person."""
import os
import signal
import threading

import pytest

from .conftest import prepared_run, wait_for

# A real server, workers and training: 5-14 min each on 2 loaded cores, above the suite default of 15 min
# once the machine is busy.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_a_killed_training_run_is_resubmitted_and_resumes_from_its_checkpoint(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from hddm_core.pipeline import stages
    from hddm_core.pipeline.params import TrainingParams
    from hddm_flows.fan_out import run_deployments
    from hddm_infra.local_stack import LocalStack, free_port
    from hddm_infra.up import bootstrap, deploy

    root = str(tmp_path / "artifacts")
    params = prepared_run(root, expert_training=TrainingParams(architecture="tiny-16", steps=300, batch_size=4,
                                                               checkpoint_interval=20, ema_decay=0.5))
    job = params.expert_params(0)
    checkpoints = os.path.join(root, stages.expert_run_prefix(job, stages.stage_key("train-expert", job)),
                               "checkpoints", "latest.json")
    s = LocalStack(home=str(tmp_path / "prefect-home"), port=free_port())
    try:
        s.start_server()
        bootstrap(s, gpus=1)
        deploy(s, ["train-expert"])
        s.start_worker("hddm-gpu", "crash-gpu", cwd=str(tmp_path))
        with temporary_settings({PREFECT_API_URL: s.api_url}), get_client(sync_client=True) as client:
            result = {}

            def fan_out():  # settings are context-local: a new thread needs its own
                with temporary_settings({PREFECT_API_URL: s.api_url}):
                    result.update(ref=run_deployments("train-expert/train-expert", [job], poll_s=1.0))

            fan = threading.Thread(target=fan_out, daemon=True)
            fan.start()
            import json

            wait_for(lambda: os.path.exists(checkpoints) and json.load(open(checkpoints))["step"] >= 20, 600,
                     "the training run's first checkpoint after step 0", poll=0.5)
            (first,) = client.read_flow_runs()
            killed_at = json.load(open(checkpoints))["step"]
            assert killed_at < 300, "training finished before it could be killed: raise steps"
            pid = int(str(first.infrastructure_pid).rsplit(":", 1)[-1])
            os.kill(pid, signal.SIGKILL)
            fan.join(timeout=900)
            assert not fan.is_alive(), "the fan-out did not finish"
            runs = sorted(client.read_flow_runs(), key=lambda r: r.created)
            assert [r.state.type.value for r in runs] == ["CRASHED", "COMPLETED"], [(r.name, r.state) for r in runs]
            assert runs[1].name == "train-expert-cluster-0-ddpm-eps-resume-1" and "cluster-0" in runs[1].tags

            def logs():  # the run's logs reach the API in batches, after its state
                return " ".join(x.message for x in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(
                    any_=[runs[1].id]))))

            wait_for(lambda: "resumed" in logs() and " at step " in logs(), 120,
                     "the stage's 'resumed ... at step N' line in the run's logs")
        ref = result["ref"][0]
        assert os.path.isfile(os.path.join(ref.uri.removeprefix("file://"), "expert.json"))
        assert json.load(open(checkpoints))["step"] == 300
    finally:
        s.stop()
