"""The `hddm.expert.landed` Prefect event: one emitter for every way an expert lands (the register-expert
flow, `hddmp expert register` and `hddmp expert submit` in-process), whose trigger runs its evaluation.

The event id is a uuid5 of the weights' sha256: the same expert always gives the same id. Prefect drops
an id it has already seen only while it is in its in-memory caches (minutes, one server process): after a
server restart a repeated landing triggers the evaluate deployment again. What makes the evaluation
happen once is the evaluation's own idempotency record in the artifact store (hddm_tasks.once): the
repeat run finds it and finishes at once with the report's link.
"""
from __future__ import annotations

import asyncio
import uuid
from typing import Optional

from prefect.events import emit_event

EXPERT_LANDED_EVENT = "hddm.expert.landed"
# uuid5 namespace for event ids (fixed forever: changing it would re-trigger every known expert).
EVENT_NAMESPACE = uuid.UUID("6f1c1f3e-3c1e-5b7a-9d1a-4c8f2e0b7a11")


def landed_event_id(weights_sha256: str) -> str:
    """Deterministic event id for an expert landing: repeated emissions are one event to Prefect."""
    if not weights_sha256:
        raise ValueError("landed_event_id needs the expert's weights sha256, got an empty value")
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{EXPERT_LANDED_EVENT}:{weights_sha256}"))


def _landed_fields(expert_uri: str, weights_sha256: str, prefix: str, cluster_id: Optional[int],
                   objective: Optional[str]) -> dict:
    """The event's fields, written once for both ways of sending it."""
    return dict(event=EXPERT_LANDED_EVENT, id=uuid.UUID(landed_event_id(weights_sha256)),
                resource={"prefect.resource.id": f"hddm.expert.{weights_sha256}", "prefect.resource.name": prefix},
                payload={"expert_uri": expert_uri, "weights_sha256": weights_sha256, "cluster_id": cluster_id,
                         "objective": objective})


def emit_landed(*, expert_uri: str, weights_sha256: str, prefix: str, cluster_id: Optional[int] = None,
                objective: Optional[str] = None) -> str:
    """Emit hddm.expert.landed through Prefect's background events worker (inside a flow run, which drains
    it when the run ends); returns the event id."""
    fields = _landed_fields(expert_uri, weights_sha256, prefix, cluster_id, objective)
    emit_event(fields.pop("event"), **fields)
    return str(fields["id"])


def send_landed(api_url: str, *, expert_uri: str, weights_sha256: str, prefix: str,
                cluster_id: Optional[int] = None, objective: Optional[str] = None, timeout: float = 60.0) -> str:
    """Send hddm.expert.landed to the server at api_url and wait until the server has received it; raises
    when it cannot be delivered. For a command that exits right after: emit_landed's background worker is
    process-global, bound to the URL it first saw, and may still hold the event when the process ends."""
    fields = _landed_fields(expert_uri, weights_sha256, prefix, cluster_id, objective)
    _deliver(api_url, fields, timeout)
    return str(fields["id"])


def _deliver(api_url: str, fields: dict, timeout: float) -> None:
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient
    from prefect.utilities.asyncutils import run_coro_as_sync

    event = Event(**fields)

    async def send() -> None:
        # checkpoint_every=1: the emit returns after the server answered a ping sent behind the event
        async with PrefectEventsClient(api_url=api_url, reconnection_attempts=2, checkpoint_every=1) as client:
            await asyncio.wait_for(client.emit(event), timeout)

    run_coro_as_sync(send())


def ref_fields(ref) -> dict:
    """The landed-event arguments of a register-expert StageRef (hddm_core.pipeline.stages.run_register_expert)."""
    return dict(expert_uri=ref.uri, weights_sha256=ref.content_hash, prefix=ref.prefix,
                cluster_id=ref.extra.get("cluster_id"), objective=ref.extra.get("objective"))


def emit_landed_ref(ref) -> str:
    """emit_landed for a register-expert StageRef."""
    return emit_landed(**ref_fields(ref))
