"""A local Prefect stack on 127.0.0.1: server, process workers (one per GPU), stopped by pid.

Used by `hddmp up` / `hddmp down` and by the end-to-end tests. Every process is started in its own
session (setsid) so it can be stopped with its children; Prefect workers ignore SIGTERM, so we stop
with SIGINT first, then SIGKILL after a grace period (docs/stack-notes.md).

One run per GPU: each GPU worker is started with `--limit 1` and its own CUDA_VISIBLE_DEVICES
(start_gpu_workers), so a worker never takes a second GPU run while the other workers idle.
A stack recorded in <home>/local-stack.json whose server is alive and answers on its port is running:
`running` finds it, so a second `up` says so instead of orphaning it. `stop` first cancels the runs
still in flight (Cancelling, so their workers end them; Cancelled by force for any left once the
workers are gone), so no run stays Running forever after `down`.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field

from hddm_flows.environment import apply_defaults, ephemeral_startup_timeout

log = logging.getLogger(__name__)


class StackAlreadyRunning(RuntimeError):
    """`up` found a live stack recorded under the same home, or its port taken by another process."""


ACTIVE_STATES = ("RUNNING", "PENDING", "CANCELLING")  # a run a worker process is executing
CANCEL_GRACE_S = 20.0  # for workers to end their cancelled runs before they are stopped


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return not _reap(pid)  # our own exited child is a zombie until reaped


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def kill_run_process(infrastructure_pid: str | None) -> None:
    """SIGKILL a flow run's process on this host ('hostname:pid', as a process worker records it). The
    worker starts each run in its own session, so stopping the worker's group does not reach it."""
    host, _, pid = str(infrastructure_pid or "").rpartition(":")
    if not pid.isdigit() or host not in (socket.gethostname(), ""):
        return
    for kill in (os.killpg, os.kill):
        try:
            kill(int(pid), signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            continue


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_env(extra: dict | None = None) -> dict:
    """This process's environment with the project's defaults (hddm_flows.environment) where unset."""
    env = apply_defaults(dict(os.environ), PREFECT_SERVER_UI_ENABLED="true")
    env.update(extra or {})
    return env


def _spawn(cmd: list[str], env: dict, log_path: str, cwd: str | None = None) -> int:
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    out = open(log_path, "ab")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    return proc.pid


def wait_healthy(api_url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"Prefect server at {api_url} not healthy after {timeout:.0f}s (last error: {last})")


INTERRUPT_WAIT_S = 3.0  # a Prefect worker's first SIGINT only stops it dequeueing runs; the second ends it


def stop_pid(pid: int, grace: float = 15.0) -> None:
    """SIGINT the process group, again after INTERRUPT_WAIT_S (a Prefect worker waits for its runs on
    the first interrupt and exits on the second: without it `down` sat out the whole grace period), then
    SIGKILL whatever is left after `grace` seconds."""
    for sig, wait in ((signal.SIGINT, INTERRUPT_WAIT_S), (signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
                done = _reap(pid)
            except ProcessLookupError:
                return
            if done:
                return
            time.sleep(0.2)


def _reap(pid: int) -> bool:
    try:
        wpid, _ = os.waitpid(pid, os.WNOHANG)
        return wpid == pid
    except ChildProcessError:
        return False


@dataclass
class LocalStack:
    home: str  # PREFECT_HOME and logs
    port: int = 4200
    server_pid: int | None = None
    worker_pids: list[int] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def state_file(self) -> str:
        return os.path.join(self.home, "local-stack.json")

    def env(self, extra: dict | None = None) -> dict:
        return offline_env({"PREFECT_HOME": self.home, "PREFECT_API_URL": self.api_url, **(extra or {})})

    def start_server(self, timeout: float | None = None) -> None:
        """timeout: seconds until /health answers; default the project's start-up timeout (300 s unless
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS says otherwise: a loaded 2-core machine is slow)."""
        timeout = ephemeral_startup_timeout() if timeout is None else timeout
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self.server_pid = _spawn(cmd, self.env({"PREFECT_API_URL": ""}), os.path.join(self.home, "logs", "server.log"))
        self.save()
        wait_healthy(self.api_url, timeout)
        log.info("Prefect server up at %s (pid %s)", self.api_url, self.server_pid)

    def start_worker(self, pool: str, name: str, gpu: str | None = None, cwd: str | None = None,
                     limit: int | None = None) -> int:
        """One process worker; gpu pins it to one device through CUDA_VISIBLE_DEVICES; limit: the most
        flow runs it executes at once (a GPU worker: 1)."""
        if limit is not None and limit < 1:
            raise ValueError(f"worker limit must be >= 1 (or None for no limit), got {limit}")
        extra = {} if gpu is None else {"CUDA_VISIBLE_DEVICES": str(gpu)}
        cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--name", name, "--type", "process"]
        if limit is not None:
            cmd += ["--limit", str(limit)]
        pid = _spawn(cmd, self.env(extra), os.path.join(self.home, "logs", f"worker-{name}.log"), cwd=cwd)
        self.worker_pids.append(pid)
        self.save()
        return pid

    def start_gpu_workers(self, pool: str, gpus: list[str | None], prefix: str = "local-gpu",
                          cwd: str | None = None) -> list[int]:
        """One worker per GPU, each pinned to its device and limited to one run (None: a CPU-only host's
        stand-in, still limited to one run)."""
        return [self.start_worker(pool, f"{prefix}{gpu if gpu is not None else '-cpu'}", gpu=gpu, cwd=cwd, limit=1)
                for gpu in gpus]

    def _active_runs(self, client) -> list:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

        return client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=list(ACTIVE_STATES)))))

    def cancel_runs(self, grace: float = CANCEL_GRACE_S, force: bool = False) -> list[str]:
        """Cancel the flow runs in flight on this stack's server; names of those cancelled. Not force:
        set Cancelling and wait up to `grace` s for the workers to end them. force: Cancelled outright
        (after the workers are gone, nothing else would ever move them)."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings
        from prefect.states import Cancelled, Cancelling

        message = "stopped by `hddmp down`: the local stack shut down while this run was in flight"
        with temporary_settings({PREFECT_API_URL: self.api_url}), get_client(sync_client=True) as client:
            runs = self._active_runs(client)
            for run in runs:
                if force:
                    kill_run_process(run.infrastructure_pid)
                state = Cancelled(message=message) if force else Cancelling(message=message)
                client.set_flow_run_state(run.id, state, force=True)
            deadline = time.monotonic() + (0 if force else grace)
            while not force and runs and time.monotonic() < deadline and self._active_runs(client):
                time.sleep(1.0)
        return [r.name for r in runs]

    def stop(self, cancel_runs: bool = True) -> None:
        """Cancel runs in flight (cancel_runs), then stop workers and server by pid."""
        server_up = cancel_runs and pid_alive(self.server_pid) and port_in_use(self.port)
        if server_up:
            try:
                self.cancel_runs()
            except Exception as exc:  # never keep the processes alive because the API misbehaved
                log.warning("could not cancel the runs in flight before stopping: %s", exc)
        for pid in self.worker_pids:
            stop_pid(pid)
        if server_up:
            try:
                self.cancel_runs(force=True)
            except Exception as exc:
                log.warning("could not mark the runs left in flight Cancelled: %s", exc)
        if self.server_pid:
            stop_pid(self.server_pid)
        self.worker_pids, self.server_pid = [], None
        if os.path.exists(self.state_file):
            os.remove(self.state_file)

    def save(self) -> None:
        os.makedirs(self.home, exist_ok=True)
        with open(self.state_file, "w") as f:
            json.dump(asdict(self), f)

    @classmethod
    def running(cls, home: str) -> "LocalStack | None":
        """The stack recorded under `home` if its server is alive and its port answers, else None."""
        try:
            stack = cls.load(home)
        except FileNotFoundError:
            return None
        return stack if pid_alive(stack.server_pid) and port_in_use(stack.port) else None

    @classmethod
    def load(cls, home: str) -> "LocalStack":
        path = os.path.join(home, "local-stack.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no local stack recorded at {path}; start one with `hddmp up`")
        with open(path) as f:
            return cls(**json.load(f))


def visible_gpus() -> list[str]:
    """GPU indices for one-worker-per-GPU: CUDA_VISIBLE_DEVICES if set, else torch's count."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() != ""]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []
