"""Expert registration (validate, store, emit hddm.expert.landed) and evaluation tasks."""
from __future__ import annotations

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from hddm_core.pipeline import stages
from hddm_core.pipeline.params import EvaluateParams, RegisterExpertParams
from hddm_core.pipeline.stages import StageRef

from .common import RETRY_DELAYS, Progress, retry_transient
from .events import emit_landed_ref


@task(name="register-expert", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient, timeout_seconds=3600)
def register_expert(params: RegisterExpertParams) -> StageRef:
    """Side effects (store writes, an event): never cached; the store copy itself is idempotent."""
    ref = stages.run_register_expert(params)
    create_markdown_artifact("\n".join(f"- {c}" for c in ref.counts["checks"]), key="register-expert-checks",
                             description=f"validation of {params.source}")
    if params.emit_event:
        emit_landed_ref(ref)  # a deterministic event id: a repeated landing is one event (tasks/events.py)
    return ref


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
