"""Announcing a landed expert: the `hddm.expert.landed` Prefect event whose trigger runs its evaluation.

The event is the register-expert flow's own (hddm_core.stages: EXPERT_LANDED_EVENT, landed_event_id:
the same weights always give the same event id, so a repeated submission is one event to Prefect).
With no Prefect API configured nothing is sent, and the message says so plainly.
"""
from __future__ import annotations

import importlib
import os
import sys


def _orchestration_emitter():
    """The orchestration layer's emitter when the repository's tasks/ folder is importable, else None."""
    root = os.getcwd()
    if os.path.isdir(os.path.join(root, "tasks")) and root not in sys.path:
        sys.path.append(root)  # tasks/ is a repository folder (Prefect's working-directory model)
    for module, name in (("tasks.register", "emit_expert_landed"), ("tasks.experts", "emit_expert_landed")):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


def emit_landed(uri: str, weights_sha256: str, cluster_id, objective: str, run_url: str, name: str) -> str:
    """Emit hddm.expert.landed; returns the event id."""
    from prefect.events import emit_event

    from hddm_core.stages import EXPERT_LANDED_EVENT, landed_event_id

    event_id = landed_event_id(weights_sha256)
    emit_event(event=EXPERT_LANDED_EVENT, id=event_id,
               resource={"prefect.resource.id": f"hddm.expert.{weights_sha256[:16]}", "hddm.expert.uri": uri,
                         "hddm.expert.name": name},
               payload={"uri": uri, "weights_sha256": weights_sha256, "cluster_id": cluster_id, "objective": objective,
                        "artifact_root": run_url, "name": name})
    return event_id


def announce_landing(result: dict, *, run_url: str, experts_prefix: str) -> str:
    """Send the landed event when a Prefect API is configured; a line saying what happened."""
    if not os.environ.get("PREFECT_API_URL"):
        return ("no event sent: no Prefect API is configured (PREFECT_API_URL is unset), so no evaluation was "
                f"triggered; the expert is stored at {result['uri']}. The run's operator can evaluate it with "
                f"`hddmp evaluate --artifact-root {run_url} --experts-prefix {experts_prefix}`")
    emitter = _orchestration_emitter()
    if emitter is not None:
        event_id = emitter(result)
    else:
        event_id = emit_landed(result["uri"], result["weights_sha256"], result["cluster_id"], result["objective"],
                               run_url, result["name"])
    return f"sent hddm.expert.landed (event {event_id}) to {os.environ['PREFECT_API_URL']}: its evaluation is triggered"
