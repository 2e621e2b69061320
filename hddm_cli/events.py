"""Announcing a landed expert: the `hddm.expert.landed` Prefect event whose trigger runs its evaluation.

The event is the register-expert flow's own (hddm_core.pipeline.stages: EXPERT_LANDED_EVENT, landed_event_id:
the same weights always give the same event id, so a repeated submission is one event to Prefect).
With no Prefect API configured nothing is sent, and the message says so plainly.
"""
from __future__ import annotations

import importlib
import os
import sys
import uuid


def _orchestration_emitter():
    """tasks.experts.emit_landed (the register-expert flow's emitter) when the repository's tasks/ folder
    is importable (run from the repository root, Prefect's working-directory model), else None."""
    for root in (os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
        if os.path.isfile(os.path.join(root, "tasks", "experts.py")):
            if root not in sys.path:
                sys.path.append(root)
            try:
                return importlib.import_module("tasks.experts").emit_landed
            except (ImportError, AttributeError):
                return None
    return None


def _ref(result: dict):
    """The register-expert stage's reference for a submitted expert (what its emitter reads)."""
    from hddm_core.pipeline.stages import StageRef, landed_event_id

    return StageRef(stage="register-expert", uri=result["uri"], prefix=result["key"],
                    content_hash=result["weights_sha256"], key=result["weights_sha256"],
                    extra={"cluster_id": result["cluster_id"], "objective": result["objective"],
                           "event_id": landed_event_id(result["weights_sha256"])})


def emit_landed(ref) -> str:
    """The same event as tasks.experts.emit_landed (used when the repository's tasks/ is not importable)."""
    from prefect.events import emit_event

    from hddm_core.pipeline.stages import EXPERT_LANDED_EVENT

    emit_event(EXPERT_LANDED_EVENT, id=uuid.UUID(ref.extra["event_id"]),
               resource={"prefect.resource.id": f"hddm.expert.{ref.content_hash}", "prefect.resource.name": ref.prefix},
               payload={"expert_uri": ref.uri, "weights_sha256": ref.content_hash,
                        "cluster_id": ref.extra.get("cluster_id"), "objective": ref.extra.get("objective")})
    return ref.extra["event_id"]


def announce_landing(result: dict, *, run_url: str, experts_prefix: str) -> str:
    """Send the landed event when a Prefect API is configured; a line saying what happened."""
    if not os.environ.get("PREFECT_API_URL"):
        return ("no event sent: no Prefect API is configured (PREFECT_API_URL is unset), so no evaluation was "
                f"triggered; the expert is stored at {result['uri']}. The run's operator can evaluate it with "
                f"`hddmp evaluate --artifact-root {run_url} --experts-prefix {experts_prefix}`")
    ref = _ref(result)
    emitter = _orchestration_emitter() or emit_landed
    emitter(ref)
    event_id = ref.extra["event_id"]
    return f"sent hddm.expert.landed (event {event_id}) to {os.environ['PREFECT_API_URL']}: its evaluation is triggered"
