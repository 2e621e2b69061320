"""Expert registration (validate, store, emit hddm.expert.landed) and evaluation tasks."""
from __future__ import annotations

import uuid
from typing import Optional

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from hddm_core.pipeline import stages
from hddm_core.pipeline.params import EvaluateParams, RegisterExpertParams
from hddm_core.pipeline.stage_cards import evaluation_card
from hddm_core.pipeline.stages import StageRef
from hddm_core.storage import open_store

from .common import RETRY_DELAYS, Progress, artifact_key, browsable_link, result_key, retry_transient, summary_card
from .events import emit_landed_ref
from .once import EvaluationClaim, claim_key


@task(name="register-expert", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient, timeout_seconds=3600)
def register_expert(params: RegisterExpertParams) -> StageRef:
    """Side effects (store writes, an event): never cached; the store copy itself is idempotent."""
    ref = stages.run_register_expert(params)
    create_markdown_artifact("\n".join(f"- {c}" for c in ref.counts["checks"]),
                             key=artifact_key("register-expert-checks", params.name),
                             description=f"validation of {params.source}")
    if params.emit_event:
        emit_landed_ref(ref)  # its evaluation runs once per expert, durably: evaluate_once (tasks/once.py)
    return ref


@task(name="evaluate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient, timeout_seconds=24 * 3600)
def evaluate(params: EvaluateParams) -> StageRef:
    """Idempotent by its own manifest (keyed by expert weights + config), so no Prefect cache needed."""
    ref = stages.run_evaluate(params, progress=Progress("evaluate", "routing modes sampled"))
    rows = [{"routing": mode, **{k: (None if v is None else round(v, 4)) for k, v in metrics.items()}}
            for mode, metrics in ref.extra["metrics"].items()]
    create_table_artifact(rows, key=result_key("evaluation-metrics", ref),
                          description=f"metrics per routing mode ({ref.uri})")
    report_card(params, ref)
    return ref


def report_card(params: EvaluateParams, ref: StageRef, note: str = "") -> None:
    """The evaluation's card (metrics per routing mode, sample grids and plots inline), and a link to
    report.md where a browser can open it."""
    summary_card(lambda: evaluation_card(open_store(params.artifact_root), ref),
                 key=result_key("evaluation-report", ref),
                 description=f"evaluation{note}: metrics per routing mode, sample grids, plots ({ref.uri})")
    browsable_link(ref.extra["report"], link_text=f"evaluation report{note} (markdown)",
                   key=result_key("evaluation-report-link", ref))


def flow_run_state(run_id: str) -> Optional[str]:
    """The state type of a flow run on this Prefect server ('RUNNING', ...), None when it does not know it."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(run_id))
    except (ObjectNotFound, ValueError):
        return None
    return run.state.type.value if run.state is not None else None


def evaluate_once(params: EvaluateParams) -> StageRef:
    """The evaluate task behind an idempotency record in the artifact store (tasks/once.py): a set of
    experts and a config already evaluated, by any run on any server, finishes at once with its report."""
    from prefect import get_run_logger
    from prefect.runtime import flow_run

    logger = get_run_logger()
    run_id = str(flow_run.id or uuid.uuid4())
    claim = EvaluationClaim(open_store(params.artifact_root), claim_key(params), run_id, flow_run_state)
    outcome = claim.acquire(force=params.force)
    if outcome.ref is not None:
        logger.info("already evaluated (by flow run %s): %s", outcome.by, outcome.ref.extra.get("report"))
        report_card(params, outcome.ref, note=" (already evaluated)")
        return outcome.ref
    logger.info("claimed evaluation %s (attempt %d)", claim.prefix, outcome.attempt)
    ref = evaluate(params)
    claim.finish(ref)
    return ref
