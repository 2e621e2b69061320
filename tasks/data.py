"""Data stage tasks: download, recaption, embed, cluster, prepare."""
from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact

from hddm_core.pipeline import stages
from hddm_core.pipeline.params import ClusterParams, DownloadParams, EmbedParams, PrepareParams, RecaptionParams
from hddm_core.pipeline.stage_cards import cluster_card
from hddm_core.pipeline.stages import StageRef
from hddm_core.storage import open_store

from .common import RETRY_DELAYS, browsable_link, cache_key, result_key, retry_transient, summary_card

_COMMON = dict(retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient, persist_result=True)


@task(name="download", cache_key_fn=cache_key("download"), timeout_seconds=6 * 3600, tags=["hddm-cpu"], **_COMMON)
def download(params: DownloadParams) -> StageRef:
    ref = stages.run_download(params)
    c = ref.counts
    create_table_artifact([{k: c.get(k) for k in ("count", "success", "failed_to_download", "success_rate")}],
                          key=result_key("download-summary", ref),
                          description=f"img2dataset download into {ref.uri}")
    return ref


@task(name="recaption", cache_key_fn=cache_key("recaption"), timeout_seconds=24 * 3600, tags=["hddm-gpu-map"], **_COMMON)
def recaption(params: RecaptionParams) -> StageRef:
    return stages.run_recaption(params)


@task(name="embed", cache_key_fn=cache_key("embed"), timeout_seconds=24 * 3600, tags=["hddm-gpu-map"], **_COMMON)
def embed(params: EmbedParams) -> StageRef:
    return stages.run_embed(params)


@task(name="cluster", cache_key_fn=cache_key("cluster"), timeout_seconds=6 * 3600, **_COMMON)
def cluster(params: ClusterParams) -> StageRef:
    ref = stages.run_cluster(params)
    store = open_store(params.artifact_root)
    summary_card(lambda: cluster_card(store, ref), key=result_key("cluster-report", ref),
                 description="hierarchical k-means: sizes, agreement with the group labels, cluster grid")
    create_table_artifact([{"cluster": i, "size": n} for i, n in enumerate(ref.counts.get("sizes", []))],
                          key=result_key("cluster-sizes", ref), description="samples per cluster")
    browsable_link(ref.extra["picture"], link_text="cluster grid (PNG)", key=result_key("cluster-grid", ref))
    return ref


@task(name="prepare-cluster-data", cache_key_fn=cache_key("prepare"), timeout_seconds=24 * 3600, **_COMMON)
def prepare(params: PrepareParams) -> StageRef:
    return stages.run_prepare(params)
