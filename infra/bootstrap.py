"""Bootstrap a Prefect server for HDDM: work pools and GPU concurrency limits.

    python -m hddm_infra.bootstrap [--gpus N] [--kubernetes]

- hddm-cpu: a process pool for the CPU data stages (download, cluster) and the pipeline flow.
- hddm-gpu: a process pool (one worker per GPU, infra/start_gpu_workers.sh) limited to N concurrent
  runs, or with --kubernetes a Kubernetes pool from infra/k8s/gpu-pool-base-job-template.json.
- A tag concurrency limit `hddm-gpu` (N task runs at once) for tasks tagged as GPU work.
- No crash automation: a crashed train-expert run is resubmitted by the pipeline's fan-out as a new
  flow run with the same parameters, a bounded number of times, and resumes from its latest checkpoint
  (hddm_flows.fan_out). The automation earlier versions created ("hddm: reschedule crashed
  train-expert", crashed -> Scheduled) is deleted: the process worker answered the rescheduled run
  with Crashed again within seconds, and alongside the resubmission it could run an expert twice.
Idempotent: existing pools and limits are updated, not duplicated.
"""
from __future__ import annotations

import argparse
import json
import logging
import os

log = logging.getLogger(__name__)
CPU_POOL, GPU_POOL, GPU_TAG = "hddm-cpu", "hddm-gpu", "hddm-gpu"
OLD_CRASH_AUTOMATION = "hddm: reschedule crashed train-expert"  # deleted by bootstrap (see above)
K8S_TEMPLATE = os.path.join(os.path.dirname(__file__), "k8s", "gpu-pool-base-job-template.json")


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
        Automation.read(name=OLD_CRASH_AUTOMATION).delete()
        done["deleted_automation"] = OLD_CRASH_AUTOMATION
    except (ValueError, ObjectNotFound):
        pass
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
