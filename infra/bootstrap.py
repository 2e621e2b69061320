"""Bootstrap a Prefect server for HDDM: work pools, GPU concurrency limits, the crashed-run automation.

    python -m hddm_infra.bootstrap [--gpus N] [--kubernetes]

- hddm-cpu: a process pool for the CPU data stages (download, cluster) and the pipeline flow.
- hddm-gpu: a process pool (one worker per GPU, infra/start_gpu_workers.sh) limited to N concurrent
  runs, or with --kubernetes a Kubernetes pool from infra/k8s/gpu-pool-base-job-template.json.
- A tag concurrency limit `hddm-gpu` (N task runs at once) for tasks tagged as GPU work.
- Automation "hddm: reschedule crashed train-expert": when a train-expert flow run crashes (worker
  lost, node preempted, OOM kill) it is set back to Scheduled once; training resumes from its latest
  checkpoint (hddm_core.training). A run that crashes again within 24 h stays Crashed.
Idempotent: existing pools, limits and automations are updated, not duplicated.
"""
from __future__ import annotations

import argparse
import json
import logging
import os

log = logging.getLogger(__name__)
CPU_POOL, GPU_POOL, GPU_TAG = "hddm-cpu", "hddm-gpu", "hddm-gpu"
CRASH_AUTOMATION = "hddm: reschedule crashed train-expert"
RESCHEDULED_NAME = "RescheduledAfterCrash"  # the Scheduled state's name marks a run as already rescheduled
K8S_TEMPLATE = os.path.join(os.path.dirname(__file__), "k8s", "gpu-pool-base-job-template.json")


def crash_automation_spec() -> dict:
    """The automation as JSON (AutomationCore fields): crashed train-expert run -> Scheduled, once.

    'Once' comes from the trigger's bucketing: a Reactive trigger fires as soon as its threshold (1) is
    met, then waits out the rest of its window before it can fire again for the same for_each key
    (prefect/server/events/triggers.py). Keyed by the flow run id with a 24 h window, each run is
    rescheduled at most once a day; a run that crashes again in that time stays Crashed."""
    return {
        "name": CRASH_AUTOMATION,
        "description": "Reschedule a crashed train-expert flow run once; it resumes from its checkpoint.",
        "enabled": True,
        "trigger": {
            "type": "event", "posture": "Reactive", "threshold": 1, "within": 86400,
            "expect": ["prefect.flow-run.Crashed"],
            "match": {"prefect.resource.id": "prefect.flow-run.*"},
            "match_related": {"prefect.resource.role": "flow", "prefect.resource.name": "train-expert"},
            "for_each": ["prefect.resource.id"],
        },
        "actions": [{"type": "change-flow-run-state", "state": "SCHEDULED", "name": RESCHEDULED_NAME,
                     "message": "rescheduled once after a crash by infra/bootstrap.py; resumes from checkpoint"}],
    }


def bootstrap(gpus: int = 1, kubernetes: bool = False) -> dict:
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    if gpus < 1:
        raise ValueError(f"gpus must be >= 1 (the GPU pool's concurrency limit), got {gpus}")
    done = {}
    with get_client(sync_client=True) as client:
        gpu_type, template = "process", None
        if kubernetes:
            with open(K8S_TEMPLATE) as f:
                gpu_type, template = "kubernetes", json.load(f)
        for name, kind, limit, tmpl in ((CPU_POOL, "process", None, None), (GPU_POOL, gpu_type, gpus, template)):
            spec = dict(name=name, type=kind, concurrency_limit=limit,
                        description="HDDM " + ("GPU work: one run per GPU" if name == GPU_POOL else "CPU stages"))
            if tmpl is not None:
                spec["base_job_template"] = tmpl
            try:
                client.create_work_pool(WorkPoolCreate(**spec))
            except ObjectAlreadyExists:
                client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit))
            done[name] = {"type": kind, "concurrency_limit": limit}
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=gpus)  # upserts by tag
        done["tag_limit"] = {GPU_TAG: gpus}
    try:
        old = Automation.read(name=CRASH_AUTOMATION)
        old.delete()
    except (ValueError, ObjectNotFound):
        pass
    automation = Automation.model_validate(crash_automation_spec()).create()
    done["automation"] = str(automation.id)
    log.info("bootstrapped: %s", done)
    return done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hddm_infra.bootstrap", description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=int(os.environ.get("HDDM_GPUS", "1")),
                        help="concurrent GPU runs (pool and tag limits); default $HDDM_GPUS or 1")
    parser.add_argument("--kubernetes", action="store_true", help="make hddm-gpu a Kubernetes pool")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(bootstrap(args.gpus, args.kubernetes), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
