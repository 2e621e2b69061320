"""One flow per stage. Parameters are the pydantic models of hddm_core.pipeline.params, so the Prefect UI
renders a form (descriptions, enums, bounds) and invalid input is rejected before any work. Each run
names and tags itself after its stage, cluster and objective (hddm_flows.run_labels)."""
from __future__ import annotations

from typing import Optional

from prefect import flow

from hddm_core.pipeline import stages
from hddm_core.pipeline.params import (ClusterParams, DownloadParams, EmbedParams, EvaluateParams, PrepareParams,
                              RecaptionParams, RegisterExpertParams, TrainExpertParams, TrainHomogeneousParams,
                              TrainMonolithParams, TrainRouterParams)
from hddm_core.pipeline.stages import StageRef
from hddm_flows.dask_runner import on_dask
from hddm_flows.run_labels import run_name, tag_run
from hddm_tasks import data, experts, training


def stage_flow(stage: str, **options):
    """@flow for a stage: its name, its run's name (stage, cluster, objective), logged prints."""
    return flow(name=stage, flow_run_name=run_name(stage), log_prints=True, **options)


@stage_flow("download")
def download(params: DownloadParams = DownloadParams()) -> StageRef:
    tag_run("download", params=params)
    return data.download(params)


@stage_flow("recaption")
def recaption(params: RecaptionParams = RecaptionParams()) -> StageRef:
    tag_run("recaption", params=params)
    return on_dask(data.recaption, params)


@stage_flow("embed")
def embed(params: EmbedParams = EmbedParams()) -> StageRef:
    tag_run("embed", params=params)
    return on_dask(data.embed, params)


@stage_flow("cluster")
def cluster(params: ClusterParams = ClusterParams()) -> StageRef:
    tag_run("cluster", params=params)
    return data.cluster(params)


@stage_flow("prepare-cluster-data")
def prepare_cluster_data(params: PrepareParams = PrepareParams()) -> StageRef:
    tag_run("prepare-cluster-data", params=params)
    return data.prepare(params)


@stage_flow("train-expert")
def train_expert(params: TrainExpertParams = TrainExpertParams()) -> StageRef:
    tag_run("train-expert", params=params)
    return training.train_expert(params)


@stage_flow("train-monolith")
def train_monolith(params: TrainMonolithParams = TrainMonolithParams()) -> StageRef:
    tag_run("train-monolith", params=params)
    return training.train_monolith(params)


@stage_flow("train-homogeneous")
def train_homogeneous(params: TrainHomogeneousParams = TrainHomogeneousParams()) -> StageRef:
    tag_run("train-homogeneous", params=params)
    return training.train_homogeneous(params)


@stage_flow("train-router")
def train_router(params: TrainRouterParams = TrainRouterParams()) -> StageRef:
    tag_run("train-router", params=params)
    return training.train_router(params)


@stage_flow("register-expert")
def register_expert(params: RegisterExpertParams) -> StageRef:
    tag_run("register-expert", params=params)
    return experts.register_expert(params)


@stage_flow("evaluate")
def evaluate(params: EvaluateParams = EvaluateParams(), expert_uri: Optional[str] = None) -> StageRef:
    """expert_uri (set by the hddm.expert.landed trigger): evaluate that expert alone; else params.experts.
    Once per experts + config, durably (hddm_tasks.once): a repeat finishes at once with the report."""
    tag_run("evaluate", params=params, expert_uri=expert_uri)
    ref = experts.evaluate_once(stages.for_landed_expert(params, expert_uri) if expert_uri else params)
    print(f"evaluation report: {ref.extra['report']}")
    return ref
