"""`hddmp up` / `down` against real processes on 127.0.0.1 with two simulated GPUs
(CUDA_VISIBLE_DEVICES=0,1 on a CPU machine): each GPU worker takes one run at a time, a second `up`
reports the running stack instead of orphaning it, and `down` during two runs leaves neither Running
(nor its process alive)."""
import os

import pytest

from .conftest import prepared_run, wait_for

# A real server, workers and training: 5-14 min each on 2 loaded cores, above the suite default of 15 min
# once the machine is busy.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_up_two_gpus_one_run_each_second_up_refused_down_cancels_runs(tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from hddm_core.pipeline.params import TrainingParams
    from hddm_infra.local_stack import LocalStack, StackAlreadyRunning, pid_alive
    from hddm_infra.up import up

    root, home = str(tmp_path / "artifacts"), str(tmp_path / "prefect-home")
    params = prepared_run(root, expert_training=TrainingParams(architecture="tiny-16", steps=5000, batch_size=4,
                                                               checkpoint_interval=50, ema_decay=0.5))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # two GPUs as far as the stack can tell
    stack = up(home, None, root, ["train-expert"])
    try:
        assert len(stack.worker_pids) == 3  # hddm-cpu + one per GPU
        with pytest.raises(StackAlreadyRunning, match=f"already running at http://127.0.0.1:{stack.port}"):
            up(home, None, root, ["train-expert"])
        assert LocalStack.load(home).server_pid == stack.server_pid  # the record still names the first stack
        with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
            runs = [run_deployment("train-expert/train-expert", timeout=0,
                                   parameters={"params": params.expert_params(c).model_dump(mode="json")})
                    for c in range(2)]
            wait_for(lambda: all(client.read_flow_run(r.id).state.is_running() for r in runs), 600,
                     "both training runs running at once")
            logs = {gpu: open(os.path.join(home, "logs", f"worker-local-gpu{gpu}.log")).read() for gpu in "01"}
            # both workers may pick up the same scheduled run; the server lets one move it to Pending and the
            # other logs "Aborted submission": a worker took a run when it submitted it and was not aborted
            took = {gpu: [str(r.id) for r in runs if f"submitting flow run '{r.id}'" in text
                          and f"Aborted submission of flow run '{r.id}'" not in text] for gpu, text in logs.items()}
            assert sorted(len(v) for v in took.values()) == [1, 1], took  # one run per worker
            pids = [int(str(client.read_flow_run(r.id).infrastructure_pid).rsplit(":", 1)[-1]) for r in runs]
            # and each run's process sees only its worker's GPU
            devices = sorted(_environ(pid).get("CUDA_VISIBLE_DEVICES") for pid in pids)
            assert devices == ["0", "1"], devices
    finally:
        stack.stop()  # what `hddmp down` does
    assert not any(pid_alive(p) for p in pids), "a training process outlived `down`"
    again = LocalStack(home=home, port=stack.port)  # the same database, to read what `down` left
    try:
        again.start_server()
        with temporary_settings({PREFECT_API_URL: again.api_url}), get_client(sync_client=True) as client:
            states = [client.read_flow_run(r.id).state for r in runs]
            assert [s.type.value for s in states] == ["CANCELLED", "CANCELLED"], states
            # Cancelling from `down`; the worker that ended the process may word the final message itself
            assert all("hddmp down" in (s.message or "") or "cancel" in (s.message or "").lower() for s in states)
    finally:
        again.stop()


def _environ(pid: int) -> dict:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(item.decode().split("=", 1) for item in f.read().split(b"\0") if b"=" in item)
