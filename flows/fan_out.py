"""Fan-out of one deployment over several parameter sets, as subflow-linked flow runs on a work pool."""
from __future__ import annotations

import time

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from hddm_core.pipeline import stages
from hddm_core.pipeline.stages import StageRef
from hddm_core.storage import open_store

POLL_S = 5.0
CRASH_GRACE_S = 120.0  # the crashed-run automation (infra/bootstrap.py) reschedules within this time


def run_deployments(name: str, jobs: list, poll_s: float = POLL_S, crash_grace_s: float = CRASH_GRACE_S) -> list[StageRef]:
    """Start one flow run of deployment `name` per job (linked as subflows: cancelling the parent
    cancels them), wait for all, and return each job's StageRef (read back from the store, where the
    finished stage recorded it, by recorded_expert; results never carry tensors)."""
    runs = [run_deployment(name, parameters={"params": job.model_dump(mode="json")}, timeout=0, as_subflow=True)
            for job in jobs]
    with get_client(sync_client=True) as client:
        pending = {r.id for r in runs}
        states, crashed_since = {}, {}
        while pending:
            for run_id in list(pending):
                fr = client.read_flow_run(run_id)
                if fr.state is not None and fr.state.is_crashed():  # may be rescheduled once: wait a little
                    if time.monotonic() - crashed_since.setdefault(run_id, time.monotonic()) < crash_grace_s:
                        continue
                else:
                    crashed_since.pop(run_id, None)
                if fr.state is not None and fr.state.is_final():
                    states[run_id] = fr.state
                    pending.discard(run_id)
            if pending:
                time.sleep(poll_s)
    failed = [(job, states[r.id]) for job, r in zip(jobs, runs) if not states[r.id].is_completed()]
    if failed:
        raise RuntimeError("flow runs of " + name + " did not complete: " +
                           ", ".join(f"cluster {j.cluster_id}: {s.type.value} {s.message or ''}" for j, s in failed))
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
