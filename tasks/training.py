"""Training tasks: one expert on one cluster (one GPU), the router."""
from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact

from hddm_core.pipeline import stages
from hddm_core.pipeline.params import TrainExpertParams, TrainHomogeneousParams, TrainMonolithParams, TrainRouterParams
from hddm_core.pipeline.stage_cards import expert_card, router_card
from hddm_core.pipeline.stages import StageRef
from hddm_core.storage import open_store

from .common import (RETRY_DELAYS, Progress, artifact_key, browsable_link, cache_key, result_key, retry_transient,
                     summary_card)

_COMMON = dict(retries=2, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient, persist_result=True)


@task(name="train-expert", cache_key_fn=cache_key("train-expert"), timeout_seconds=7 * 24 * 3600, tags=["hddm-gpu"],
      **_COMMON)
def train_expert(params: TrainExpertParams) -> StageRef:
    """Resumes from the run's latest checkpoint when retried, or run again after a crash (hddm_flows.fan_out)."""
    progress = Progress(f"train-expert-cluster-{params.cluster_id}",
                        f"expert for cluster {params.cluster_id} ({params.objective})")
    ref = stages.run_train_expert(params, progress=progress)
    key = result_key(f"loss-curve-cluster-{params.cluster_id}-{params.objective}", ref)
    summary_card(lambda: expert_card(open_store(params.artifact_root), ref), key=key,
                 description=f"expert for cluster {params.cluster_id} ({params.objective}): final loss, loss curve")
    browsable_link(ref.extra["loss_curve"], link_text=f"cluster {params.cluster_id} loss curve",
                   key=artifact_key(key, "png"))
    return ref


@task(name="train-router", cache_key_fn=cache_key("train-router"), timeout_seconds=7 * 24 * 3600, tags=["hddm-gpu"],
      **_COMMON)
def train_router(params: TrainRouterParams) -> StageRef:
    ref = stages.run_train_router(params, progress=Progress("train-router", "router"))
    create_table_artifact([{"t bucket": k, "accuracy": v} for k, v in ref.counts["accuracy_by_t"].items()],
                          key=result_key("router-accuracy", ref),
                          description="router accuracy per noise level (training samples, fresh noise)")
    summary_card(lambda: router_card(open_store(params.artifact_root), ref), key=result_key("router-evaluation", ref),
                 description="router: accuracy per noise level, evaluation plot, loss curve")
    browsable_link(ref.extra["evaluation_png"], link_text="router evaluation (PNG)",
                   key=result_key("router-evaluation-png", ref))
    return ref


@task(name="train-monolith", cache_key_fn=cache_key("train-monolith"), timeout_seconds=7 * 24 * 3600,
      tags=["hddm-gpu"], **_COMMON)
def train_monolith(params: TrainMonolithParams) -> StageRef:
    """The monolith baseline (baselines.py); resumes from its latest checkpoint like train-expert."""
    ref = stages.STAGES["train-monolith"](params, progress=Progress("train-monolith", "monolith baseline"))
    summary_card(lambda: expert_card(open_store(params.artifact_root), ref), key=result_key("monolith", ref),
                 description=f"monolith baseline ({params.objective}): final loss, loss curve")
    return ref


@task(name="train-homogeneous", cache_key_fn=cache_key("train-homogeneous"), timeout_seconds=7 * 24 * 3600,
      tags=["hddm-gpu"], **_COMMON)
def train_homogeneous(params: TrainHomogeneousParams) -> StageRef:
    """The homogeneous (one-objective) baseline ensemble (baselines.py)."""
    return stages.STAGES["train-homogeneous"](params, progress=Progress("train-homogeneous", "homogeneous baseline"))
