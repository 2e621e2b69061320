"""Flow run names and tags that say what a run does: stage, cluster and objective where they apply.

One vocabulary for every way a stage runs: the fan-out names the train-expert runs it submits
(hddm_flows.fan_out.run_labels), a stage flow names itself when it starts (its @flow(flow_run_name=...)
callable: an in-process subflow, a deployment run, the evaluate run the hddm.expert.landed trigger
starts), and adds the tags (Prefect sets a run's tags when it is created and has no tags hook for a
flow, so the flow adds them to its own run at its start). The landed trigger passes only expert_uri
(prefect.yaml): the cluster and objective are read from that expert's manifest.
"""
from __future__ import annotations

import functools
import logging
import uuid
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

STAGE_TAG = "hddm"  # every run of this project
CLUSTER_STAGES = {"train-expert"}  # the monolith has a cluster_id field, but trains on every cluster


def _field(params: Any, name: str):
    """A field of a params model, or of its JSON form (deployment runs may hand the dict)."""
    if params is None:
        return None
    return params.get(name) if isinstance(params, dict) else getattr(params, name, None)


def labels(stage: str, cluster_id: Optional[int] = None, objective: Optional[str] = None,
           detail: str = "") -> dict:
    """{"flow_run_name", "tags"} for a run of `stage` (detail: more of the name, not a tag)."""
    name = "-".join([stage] + ([f"cluster-{cluster_id}"] if cluster_id is not None else [])
                    + ([objective] if objective else []) + ([detail] if detail else []))
    tags = [STAGE_TAG, stage] + ([f"cluster-{cluster_id}"] if cluster_id is not None else []) \
        + ([objective] if objective else [])
    return {"flow_run_name": name, "tags": tags}


@functools.lru_cache(maxsize=64)
def expert_identity(expert_uri: str) -> tuple[Optional[int], Optional[str]]:
    """(cluster_id, objective) from an expert folder's manifest; (None, None) when it cannot be read
    (a name is no reason to fail a run: the evaluation itself reports a bad expert)."""
    from hddm_core.storage import ArtifactStore

    try:
        manifest = ArtifactStore(expert_uri).read_json("expert.json", max_bytes=1 << 20)
        cluster = manifest.get("cluster_id")
        return (int(cluster) if cluster is not None else None), (manifest.get("objective") or None)
    except Exception as exc:
        log.info("no cluster or objective for the run name: %s has no readable expert.json (%s)", expert_uri, exc)
        return None, None


def stage_labels(stage: str, parameters: dict) -> dict:
    """labels() for a stage flow called with `parameters` ({"params": ..., "expert_uri": ...})."""
    params = parameters.get("params")
    if stage == "evaluate" and parameters.get("expert_uri"):
        cluster, objective = expert_identity(str(parameters["expert_uri"]))
        out = labels(stage, cluster, objective, detail="landed")
        out["tags"].append("landed")
        return out
    if stage == "evaluate":
        experts = _field(params, "experts") or []
        return labels(stage, detail=f"{len(experts)}-experts" if experts else "registered-experts")
    if stage == "register-expert":
        return labels(stage, detail=str(_field(params, "name") or ""))
    cluster = _field(params, "cluster_id") if stage in CLUSTER_STAGES else None
    return labels(stage, cluster, _field(params, "objective"))


def run_name(stage: str) -> Callable[[], str]:
    """The flow_run_name callable of a stage flow (Prefect calls it with no arguments, inside the run):
    a name the run was given at creation that starts with this one (a fan-out resubmission,
    '...-resume-1') is kept."""

    def name() -> str:
        from prefect.runtime import flow_run

        base = stage_labels(stage, flow_run.parameters or {})["flow_run_name"]
        given = flow_run.name or ""
        return given if given.startswith(base) else base

    name.__name__ = f"{stage.replace('-', '_')}_run_name"
    return name


def tag_run(stage: str, **parameters) -> None:
    """Add this stage's tags to the current flow run (best effort: a tag is no reason to fail a run)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if flow_run.id is None:
        return
    wanted = stage_labels(stage, parameters)["tags"]
    have = list(flow_run.tags or [])
    if all(t in have for t in wanted):
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(uuid.UUID(str(flow_run.id)), tags=have + [t for t in wanted if t not in have])
    except Exception as exc:
        log.warning("could not tag flow run %s with %s: %s", flow_run.id, wanted, exc)
