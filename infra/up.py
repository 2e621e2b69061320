"""A local HDDM stack: a Prefect server on 127.0.0.1, pools and automation, deployments, workers.

    python -m hddm_infra.up   [--home .hddm/prefect] [--port 4200]    # then open http://127.0.0.1:4200
    python -m hddm_infra.down [--home .hddm/prefect]

Starts the server (infra/local_stack.py), bootstraps (infra/bootstrap.py), deploys every deployment in
the repository's prefect.yaml (found by project_root), and starts one hddm-cpu worker plus one hddm-gpu
worker per visible GPU (one on a CPU-only machine, so the GPU deployments still run), each limited to
one run at a time. A stack already running under the same home is reported, not orphaned. Every process is
recorded in <home>/local-stack.json and stopped by pid (SIGINT, then SIGKILL) by `down`.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from .local_stack import LocalStack, StackAlreadyRunning, free_port, port_in_use, visible_gpus



def project_root() -> str:
    """The folder holding prefect.yaml (what `prefect deploy` reads): the current folder, else this
    checkout's root when the package is installed editable from the repository."""
    for root in (os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
        if os.path.isfile(os.path.join(root, "prefect.yaml")):
            return root
    raise FileNotFoundError(f"no prefect.yaml in {os.getcwd()}: run this from the repository root (deployments "
                            "are declared there)")


def deploy(stack: LocalStack, names: list[str] | None = None, timeout: float = 600) -> None:
    """`prefect deploy` of the repository's prefect.yaml against this stack's server (all deployments by
    default; `--name` takes deployment names). Entrypoints are module paths, so it runs from any host
    with the package installed; prefect.yaml is only read here."""
    which = ["--all"] if not names else [a for n in names for a in ("--name", n)]
    proc = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", *which], cwd=project_root(),
                          env=stack.env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"prefect deploy failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def bootstrap(stack: LocalStack, gpus: int, timeout: float = 300) -> None:
    proc = subprocess.run([sys.executable, "-m", "hddm_infra.bootstrap", "--gpus", str(gpus)], env=stack.env(),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bootstrap failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def check_not_running(home: str, port: int | None) -> None:
    """StackAlreadyRunning when the stack recorded under `home` is alive or `port` is taken; a recorded
    stack whose server is gone has its leftover processes stopped and its record removed."""
    running = LocalStack.running(home)
    if running is not None:
        raise StackAlreadyRunning(
            f"a local Prefect stack is already running at http://127.0.0.1:{running.port} (server pid "
            f"{running.server_pid}, worker pids {running.worker_pids}, recorded in {running.state_file}); use it, "
            f"or stop it first with `hddmp down --home {home}`")
    if os.path.exists(os.path.join(home, "local-stack.json")):
        LocalStack.load(home).stop(cancel_runs=False)  # a dead server's record: clear its leftovers
    if port and port_in_use(port):
        raise StackAlreadyRunning(f"port {port} on 127.0.0.1 is in use by another process (no stack recorded in "
                                  f"{home} runs there): pass another --port, or stop that process")


def up(home: str, port: int | None = None, artifact_root: str | None = None, deploy_names: list[str] | None = None,
       gpu_workers: bool = True) -> LocalStack:
    home = os.path.abspath(home)
    repo = project_root()
    check_not_running(home, port)
    stack = LocalStack(home=home, port=port or free_port())
    extra = {}
    if artifact_root:
        extra["HDDM_ARTIFACT_ROOT"] = os.path.abspath(artifact_root) if "://" not in artifact_root else artifact_root
    try:
        stack.start_server()
        gpus = visible_gpus()
        bootstrap(stack, max(1, len(gpus)))
        deploy(stack, deploy_names)
        os.environ.update(extra)  # workers inherit the artifact root
        # workers run in the repository so a run whose artifact root is empty writes ./artifacts there
        stack.start_worker("hddm-cpu", "local-cpu", cwd=repo)
        if gpu_workers:  # one run per GPU: --limit 1 and CUDA_VISIBLE_DEVICES per worker
            stack.start_gpu_workers("hddm-gpu", gpus or [None], cwd=repo)
    except BaseException:
        stack.stop()
        raise
    return stack


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hddm_infra.up", description="start a local HDDM Prefect stack")
    parser.add_argument("--home", default=os.path.join(".hddm", "prefect"), help="PREFECT_HOME and logs")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--artifact-root", default=None, help="HDDM_ARTIFACT_ROOT for the workers")
    args = parser.parse_args(argv)
    try:
        stack = up(args.home, args.port, args.artifact_root)
    except StackAlreadyRunning as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"Prefect UI: http://127.0.0.1:{stack.port}  (API {stack.api_url})")
    print(f"server pid {stack.server_pid}, worker pids {stack.worker_pids}; stop with: python -m hddm_infra.down --home {args.home}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
