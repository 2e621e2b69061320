"""Expert training fanned out over this machine's processes (no train_deployment): one Prefect task run
per cluster on Prefect's ProcessPoolTaskRunner, at most `local_trainers` at once, one torch thread each.

Each expert trains exactly as in the sequential path (the same task, seeds and thread count, so the
same weights) and has its own task run and progress artifact. A failed cluster does not stop the others:
every expert is waited for, each finished one is recorded in the store (a rerun reuses it), and the error
names each failed cluster. A killed trainer process breaks the pool and fails the trainers still running;
each resumes from its latest checkpoint on a rerun.

Why processes and not threads: the training loop holds the GIL for most of a tiny model's step. Why not
Dask: a LocalCluster adds a scheduler and nannies for what a process pool does. Either way the children
must be told the parent's API address: without PREFECT_API_URL each child starts its own temporary
Prefect server (its runs lost, ~15 s each on a loaded machine), so the ephemeral server's address is
passed on (api_url).
"""
from __future__ import annotations

import os
from typing import Optional

from prefect import flow
from prefect.futures import wait

from hddm_core.pipeline import stages
from hddm_core.pipeline.params import TrainExpertParams
from hddm_core.pipeline.params_base import resolve_device
from hddm_core.pipeline.stages import StageRef
from hddm_flows import stages as stage_flows
from hddm_flows.fan_out import run_labels
from hddm_tasks import training


def trainer_count(local_trainers: Optional[int], jobs: list[TrainExpertParams]) -> int:
    """How many trainer processes: `local_trainers` (None: one per core on the CPU, 1 on a GPU, where
    processes would share one device's memory), never more than there are jobs."""
    if local_trainers is not None and (not isinstance(local_trainers, int) or local_trainers < 1):
        raise ValueError(f"local_trainers must be a whole number >= 1 or None, got {local_trainers!r}")
    if local_trainers is None:
        on_gpu = any(resolve_device(job.training.device) != "cpu" for job in jobs)
        local_trainers = 1 if on_gpu else (os.cpu_count() or 1)
    return max(1, min(local_trainers, len(jobs)))


def train_experts_locally(jobs: list[TrainExpertParams], local_trainers: Optional[int] = None) -> list[StageRef]:
    """Each job's StageRef, in order: one train-expert subflow after the other when one trainer is
    wanted (the path taken before concurrency), else task runs on a pool of trainer processes for the
    experts not trained yet (a finished one is reused in this process: a rerun spawns nothing)."""
    todo = [i for i, job in enumerate(jobs) if job.force or stages.recorded_ref("train-expert", job) is None]
    n = trainer_count(local_trainers, [jobs[i] for i in todo])
    if n == 1:
        return [stage_flows.train_expert(job) for job in jobs]
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.task_runners import ProcessPoolTaskRunner

    refs = {i: stage_flows.train_expert(job) for i, job in enumerate(jobs) if i not in todo}
    runner = ProcessPoolTaskRunner(max_workers=n, initializer=one_torch_thread)
    with temporary_settings({PREFECT_API_URL: api_url()}):  # the children's env is built from these settings
        refs.update(zip(todo, train_experts.with_options(task_runner=runner)([jobs[i] for i in todo])))
    return [refs[i] for i in range(len(jobs))]


def one_torch_thread() -> None:
    """Each trainer process: one intra-op thread (one process per core; the reduction order, hence the
    weights, of the sequential path under the demo's default of one thread)."""
    import torch

    torch.set_num_threads(1)


def api_url() -> str:
    """The Prefect API this process talks to: PREFECT_API_URL, else its ephemeral server's address."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or str(get_client(sync_client=True).api_url)


@flow(name="train-experts-in-processes", log_prints=True)
def train_experts(jobs: list[TrainExpertParams]) -> list[StageRef]:
    futures = [training.train_expert.with_options(task_run_name=run_labels(job)["flow_run_name"]).submit(job)
               for job in jobs]
    wait(futures)
    states = [future.state for future in futures]
    failed = [f"cluster {job.cluster_id} ({job.objective}): {state.type.value} {state.message or ''}".strip()
              for job, state in zip(jobs, states) if not state.is_completed()]
    if failed:
        done = [job.cluster_id for job, state in zip(jobs, states) if state.is_completed()]
        raise RuntimeError("expert training did not complete: " + "; ".join(failed) + (
            f". Clusters {done} finished and are recorded (a rerun reuses them)" if done else ""))
    return [future.result() for future in futures]
