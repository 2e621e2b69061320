"""The local stack's process bookkeeping, without a server: one run per GPU worker, a running stack
found (not orphaned) by a second `up`, a dead stack's record cleared."""
import json
import os
import socket

import pytest

from hddm_infra import local_stack
from hddm_infra.local_stack import LocalStack, StackAlreadyRunning
from hddm_infra.up import check_not_running


def test_every_gpu_worker_takes_one_run_on_its_own_device(tmp_path, monkeypatch):
    spawned = []
    monkeypatch.setattr(local_stack, "_spawn",
                        lambda cmd, env, log, cwd=None: spawned.append((cmd, env)) or 100 + len(spawned))
    stack = LocalStack(home=str(tmp_path))
    assert stack.start_gpu_workers("hddm-gpu", ["0", "1"]) == [101, 102]
    for (cmd, env), gpu in zip(spawned, ("0", "1")):
        assert cmd[cmd.index("--limit") + 1] == "1" and env["CUDA_VISIBLE_DEVICES"] == gpu
        assert cmd[cmd.index("--name") + 1] == f"local-gpu{gpu}"
    stack.start_gpu_workers("hddm-gpu", [None])  # a CPU-only host's stand-in: still one run at a time
    cmd = spawned[-1][0]
    assert cmd[cmd.index("--limit") + 1] == "1" and cmd[cmd.index("--name") + 1] == "local-gpu-cpu"
    with pytest.raises(ValueError, match="worker limit must be >= 1 .* got 0"):
        stack.start_worker("hddm-gpu", "x", limit=0)
    assert json.load(open(stack.state_file))["worker_pids"] == [101, 102, 103]


def test_a_second_up_reports_the_running_stack_instead_of_orphaning_it(tmp_path):
    with socket.socket() as server:  # stands in for the first stack's server: this live process, a bound port
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        LocalStack(home=str(tmp_path), port=port, server_pid=os.getpid(), worker_pids=[]).save()
        with pytest.raises(StackAlreadyRunning, match=rf"already running at http://127.0.0.1:{port} .*hddmp down"):
            check_not_running(str(tmp_path), 4200)
        os.remove(os.path.join(tmp_path, "local-stack.json"))
        with pytest.raises(StackAlreadyRunning, match=f"port {port} on 127.0.0.1 is in use by another process"):
            check_not_running(str(tmp_path), port)


def test_a_dead_stacks_record_is_cleared(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    LocalStack(home=str(tmp_path), port=local_stack.free_port(), server_pid=dead.pid, worker_pids=[]).save()
    assert LocalStack.running(str(tmp_path)) is None
    check_not_running(str(tmp_path), None)
    assert not os.path.exists(os.path.join(tmp_path, "local-stack.json"))


def test_stop_ends_a_process_that_waits_out_the_first_interrupt_like_a_prefect_worker(tmp_path):
    import subprocess
    import sys
    import time

    from hddm_infra.local_stack import INTERRUPT_WAIT_S, stop_pid

    child = ("import signal, sys, time\nn = []\n"
             "signal.signal(signal.SIGINT, lambda *a: n.append(1) or (len(n) > 1 and sys.exit(0)))\n"
             "open(sys.argv[1], 'w').close()\nwhile True: time.sleep(0.05)\n")
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", child, str(ready)], start_new_session=True)
    while not ready.exists():
        time.sleep(0.05)
    start = time.monotonic()
    stop_pid(proc.pid, grace=60)
    took = time.monotonic() - start
    assert proc.poll() == 0, "not ended by the second interrupt"
    assert INTERRUPT_WAIT_S <= took < INTERRUPT_WAIT_S + 10, took


def test_kill_run_process_ends_a_run_on_this_host_only(tmp_path):
    import subprocess
    import sys

    from hddm_infra.local_stack import kill_run_process

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    kill_run_process(f"another-host:{proc.pid}")
    kill_run_process(None)
    assert proc.poll() is None
    kill_run_process(f"{socket.gethostname()}:{proc.pid}")
    assert proc.wait(timeout=10) == -9
