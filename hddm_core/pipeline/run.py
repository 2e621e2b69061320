"""The whole pipeline in this process, as plain stage calls (what `hddmp pipeline` runs):
download -> recaption -> embed -> cluster -> prepare -> one expert per cluster (each alone, its own
declaration: objective, init, schedule, time input) -> router -> register -> evaluate.

Every stage reuses its finished identical run (hddm_core.pipeline.reuse), so a rerun continues where
the last one stopped. The Prefect flow `pipeline` orders the same stages as subflows and can fan
expert training out to a GPU pool; this function is the same order without a server.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

from hddm_core.pipeline import stages
from hddm_core.pipeline.params import PipelineParams, RegisterExpertParams
from hddm_core.pipeline.reuse import Progress

log = logging.getLogger(__name__)
ProgressFactory = Optional[Callable[[str], tuple[Progress, Callable[[], None]]]]  # label -> (update, close)


def _with_progress(fn, params, label: str, progress: ProgressFactory):
    if progress is None:
        return fn(params)
    update, close = progress(label)
    try:
        return fn(params, progress=update)
    finally:
        close()


def run_pipeline(params: PipelineParams, progress: ProgressFactory = None) -> dict:
    """Run (or reuse) every stage; returns the experts, router, report and metrics."""
    if params.train_deployment:
        raise ValueError("train_deployment fans expert training out through Prefect; run the `pipeline` deployment "
                         "(hddmp pipeline --prefect) or leave train_deployment empty to train here")
    for name, sub in (("download", params.download), ("recaption", params.recaption), ("embed", params.embed),
                      ("cluster", params.cluster), ("prepare", params.prepare)):
        ref = stages.STAGES[name](params.stage(sub))
        log.info("%s: %s%s", name, ref.uri, " (reused)" if ref.reused else "")
    k = stages.n_clusters(params, params.prepare.prefix)
    experts = []
    for c in range(k):
        job = params.expert_params(c)
        experts.append(_with_progress(stages.run_train_expert, job, f"expert {c} ({job.objective})", progress))
    router = _with_progress(stages.run_train_router, params.stage(params.router), "router", progress)
    if params.register_experts:
        for e in experts:
            stages.run_register_expert(RegisterExpertParams(
                artifact_root=params.artifact_root, source=e.uri, experts_prefix=params.evaluate.experts_prefix,
                name=f"cluster-{e.extra['cluster_id']:03d}-{e.extra['objective']}", emit_event=False))
    evaluate = params.stage(params.evaluate).model_copy(update={"experts": [e.uri for e in experts],
                                                                "router": router.uri})
    evaluation = _with_progress(stages.run_evaluate, evaluate, "evaluate (routing modes)", progress)
    return {"experts": [e.uri for e in experts], "router": router.uri, "report": evaluation.extra["report"],
            "metrics": evaluation.extra["metrics"]}
