"""One flow per stage. Parameters are the pydantic models of hddm_core.pipeline.params, so the Prefect UI
renders a form (descriptions, enums, bounds) and invalid input is rejected before any work."""
from __future__ import annotations

from typing import Optional

from prefect import flow

from hddm_core.pipeline import stages
from hddm_core.pipeline.params import (ClusterParams, DownloadParams, EmbedParams, EvaluateParams, PrepareParams,
                              RecaptionParams, RegisterExpertParams, TrainExpertParams, TrainHomogeneousParams,
                              TrainMonolithParams, TrainRouterParams)
from hddm_core.pipeline.stages import StageRef
from hddm_flows.dask_runner import on_dask
from hddm_tasks import data, experts, training


@flow(name="download", log_prints=True)
def download(params: DownloadParams = DownloadParams()) -> StageRef:
    return data.download(params)


@flow(name="recaption", log_prints=True)
def recaption(params: RecaptionParams = RecaptionParams()) -> StageRef:
    return on_dask(data.recaption, params)


@flow(name="embed", log_prints=True)
def embed(params: EmbedParams = EmbedParams()) -> StageRef:
    return on_dask(data.embed, params)


@flow(name="cluster", log_prints=True)
def cluster(params: ClusterParams = ClusterParams()) -> StageRef:
    return data.cluster(params)


@flow(name="prepare-cluster-data", log_prints=True)
def prepare_cluster_data(params: PrepareParams = PrepareParams()) -> StageRef:
    return data.prepare(params)


@flow(name="train-expert", log_prints=True)
def train_expert(params: TrainExpertParams = TrainExpertParams()) -> StageRef:
    return training.train_expert(params)


@flow(name="train-monolith", log_prints=True)
def train_monolith(params: TrainMonolithParams = TrainMonolithParams()) -> StageRef:
    return training.train_monolith(params)


@flow(name="train-homogeneous", log_prints=True)
def train_homogeneous(params: TrainHomogeneousParams = TrainHomogeneousParams()) -> StageRef:
    return training.train_homogeneous(params)


@flow(name="train-router", log_prints=True)
def train_router(params: TrainRouterParams = TrainRouterParams()) -> StageRef:
    return training.train_router(params)


@flow(name="register-expert", log_prints=True)
def register_expert(params: RegisterExpertParams) -> StageRef:
    return experts.register_expert(params)


@flow(name="evaluate", log_prints=True)
def evaluate(params: EvaluateParams = EvaluateParams(), expert_uri: Optional[str] = None) -> StageRef:
    """expert_uri (set by the hddm.expert.landed trigger): evaluate that expert alone; else params.experts.
    Once per experts + config, durably (hddm_tasks.once): a repeat finishes at once with the report."""
    ref = experts.evaluate_once(stages.for_landed_expert(params, expert_uri) if expert_uri else params)
    print(f"evaluation report: {ref.extra['report']}")
    return ref
