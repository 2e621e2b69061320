"""Expert registration (validate, store, emit hddm.expert.landed) and evaluation tasks."""
from __future__ import annotations

import uuid

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from hddm_core.pipeline import stages
from hddm_core.pipeline.params import EvaluateParams, RegisterExpertParams
from hddm_core.pipeline.stages import EXPERT_LANDED_EVENT, StageRef

from .common import RETRY_DELAYS, Progress, retry_transient


@task(name="register-expert", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient, timeout_seconds=3600)
def register_expert(params: RegisterExpertParams) -> StageRef:
    """Side effects (store writes, an event): never cached; the store copy itself is idempotent."""
    ref = stages.run_register_expert(params)
    create_markdown_artifact("\n".join(f"- {c}" for c in ref.counts["checks"]), key="register-expert-checks",
                             description=f"validation of {params.source}")
    if params.emit_event:
        emit_landed(ref)
    return ref


def emit_landed(ref: StageRef):
    """hddm.expert.landed with a deterministic id (uuid5 of the weights sha256): Prefect's trigger service
    drops an event id it has already seen, so a repeated landing triggers one evaluation."""
    return emit_event(EXPERT_LANDED_EVENT, id=uuid.UUID(ref.extra["event_id"]),
                      resource={"prefect.resource.id": f"hddm.expert.{ref.content_hash}",
                                "prefect.resource.name": ref.prefix},
                      payload={"expert_uri": ref.uri, "weights_sha256": ref.content_hash,
                               "cluster_id": ref.extra.get("cluster_id"), "objective": ref.extra.get("objective")})


@task(name="evaluate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient, timeout_seconds=24 * 3600)
def evaluate(params: EvaluateParams) -> StageRef:
    """Idempotent by its own manifest (keyed by expert weights + config), so no Prefect cache needed."""
    ref = stages.run_evaluate(params, progress=Progress("evaluate", "routing modes sampled"))
    rows = [{"routing": mode, **{k: (None if v is None else round(v, 4)) for k, v in metrics.items()}}
            for mode, metrics in ref.extra["metrics"].items()]
    create_table_artifact(rows, key="evaluation-metrics", description=f"metrics per routing mode ({ref.uri})")
    create_link_artifact(ref.extra["report"], link_text="evaluation report (markdown, sample grids, plots)",
                         key="evaluation-report")
    return ref
