"""Fan-out of one deployment over several parameter sets, as subflow-linked flow runs on a work pool.

Crash recovery lives here: a child run that crashes (its process killed, the worker or node lost, an
OOM kill) is submitted again as a new flow run of the same deployment with the same parameters, at
most `max_resubmits` times per job; a train-expert run resumes from its latest checkpoint (hddm_core.
training), so nothing finished is redone. Prefect's flow-level retries do not cover a crash (the
process that would retry is gone), and setting the crashed run back to Scheduled was answered by the
process worker with Crashed again within seconds. A Failed run (an exception in the stage) is not
resubmitted: the same input would fail the same way.
"""
from __future__ import annotations

import logging
import time

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from hddm_core.pipeline import stages
from hddm_core.pipeline.stages import StageRef
from hddm_core.storage import open_store
from hddm_flows.run_labels import labels

log = logging.getLogger(__name__)
POLL_S = 5.0
MAX_RESUBMITS = 2  # per job: a run that crashes three times in a row needs a person


def run_labels(job, resubmit: int = 0) -> dict:
    """flow_run_name and tags saying stage, cluster and objective (and which resubmission)."""
    return labels("train-expert", job.cluster_id, job.objective, detail=f"resume-{resubmit}" if resubmit else "")


def run_deployments(name: str, jobs: list, poll_s: float = POLL_S,
                    max_resubmits: int = MAX_RESUBMITS) -> list[StageRef]:
    """Start one flow run of deployment `name` per job (linked as subflows: cancelling the parent
    cancels them), resubmit a crashed one up to `max_resubmits` times, wait for all, and return each
    job's StageRef (read back from the store, where the finished stage recorded it, by recorded_expert;
    results never carry tensors)."""
    if max_resubmits < 0:
        raise ValueError(f"max_resubmits must be >= 0, got {max_resubmits}")

    def submit(job, resubmit: int = 0):
        return run_deployment(name, parameters={"params": job.model_dump(mode="json")}, timeout=0, as_subflow=True,
                              **run_labels(job, resubmit))

    runs = [submit(job) for job in jobs]
    resubmits = [0] * len(jobs)
    states = {}
    with get_client(sync_client=True) as client:
        pending = set(range(len(jobs)))
        while pending:
            for i in sorted(pending):
                state = client.read_flow_run(runs[i].id).state
                if state is None or not state.is_final():
                    continue
                if state.is_crashed() and resubmits[i] < max_resubmits:
                    resubmits[i] += 1
                    log.warning("cluster %s: flow run %s crashed (%s); resubmitting it (%d of %d), it resumes from "
                                "its latest checkpoint", jobs[i].cluster_id, runs[i].id, state.message or "no message",
                                resubmits[i], max_resubmits)
                    runs[i] = submit(jobs[i], resubmits[i])
                    continue
                states[i] = state
                pending.discard(i)
            if pending:
                time.sleep(poll_s)
    failed = [(job, states[i], resubmits[i]) for i, job in enumerate(jobs) if not states[i].is_completed()]
    if failed:
        raise RuntimeError("flow runs of " + name + " did not complete: " + ", ".join(
            f"cluster {j.cluster_id}: {s.type.value} {s.message or ''}" + (f" (after {n} resubmissions)" if n else "")
            for j, s, n in failed))
    return [recorded_expert(job) for job in jobs]


def recorded_expert(params) -> StageRef:
    """The StageRef a finished train-expert run recorded for `params` (TrainExpertParams), read back
    from the store. Never trains: the parent flow must not redo on its own machine what a worker did,
    so a missing or stale record is an error naming where it was expected."""
    params = params.model_copy(update={"force": False})  # a forced job recorded its result like any other
    store = open_store(params.artifact_root)
    key = stages.stage_key("train-expert", params)
    if key is None:
        raise LookupError(f"no recorded expert for cluster {params.cluster_id}: the prepare stage under "
                          f"{store.uri(params.prepare_prefix)} has no manifest")
    ref = stages.recorded_ref("train-expert", params)
    if ref is None:  # no record, another key, or weights gone
        ref_key = f"{stages.expert_run_prefix(params, key)}/{stages.REF_NAME}"
        raise LookupError(f"no recorded expert for cluster {params.cluster_id} ({params.objective}) at "
                          f"{store.uri(ref_key)}: its train-expert run finished without recording a result "
                          "there, or the weights it names changed")
    return ref
