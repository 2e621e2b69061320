"""Embed and recaption stage parameters -> a map over work units (hddm_core.data.coordinator).

The model travels to workers as a `ModelSpec` (factory name + kwargs) and is built there once per
worker; the coordinator never loads it (a 7B captioner on the machine that only plans is waste).
Executor: the one given (Dask, Prefect-on-Dask), else a local pool of `params.workers` processes.
"""
from __future__ import annotations

from hddm_core.data.coordinator import ProcessPool
from hddm_core.data.unit_runner import ModelSpec
from hddm_core.data.units import DownloadSource
from hddm_core.storage import ArtifactStore


def embed_spec(params, device: str) -> ModelSpec:
    if params.embedder == "inception-v3-fid":
        return ModelSpec("hddm_core.data.embed:InceptionFidEmbedder", {"device": device})
    return ModelSpec("hddm_core.data.embed:Dinov2Embedder.from_pretrained",
                     {"model_id_or_path": params.dinov2_model, "device": device})


def recaption_spec(params, device: str) -> ModelSpec:
    if params.captioner == "passthrough":
        return ModelSpec("hddm_core.data.recaption:PassthroughCaptioner")
    return ModelSpec("hddm_core.data.recaption:LlavaCaptioner.from_pretrained",
                     {"model_id_or_path": params.llava_model, "device": device,
                      "max_new_tokens": params.max_new_tokens})


def _run(stage_fn, store: ArtifactStore, params, spec: ModelSpec, config, executor, gpu: bool):
    source = DownloadSource(store.root, store.storage_options, params.download_prefix)
    pool = None if executor is not None else ProcessPool(params.workers)
    try:
        return stage_fn(store, params.prefix, spec, source, config=config, unit_size=params.unit_size,
                        executor=executor or pool, gpu=gpu, force=params.force)
    finally:
        if pool is not None:
            pool.close()


def embed_as_units(store: ArtifactStore, params, device: str, executor=None):
    from hddm_core.data.embed import EmbedConfig, embed_units

    return _run(embed_units, store, params, embed_spec(params, device), EmbedConfig(batch_size=params.batch_size),
                executor, device.startswith("cuda"))


def recaption_as_units(store: ArtifactStore, params, device: str, executor=None):
    from hddm_core.data.recaption import RecaptionConfig, recaption_units

    return _run(recaption_units, store, params, recaption_spec(params, device),
                RecaptionConfig(batch_size=params.batch_size), executor, device.startswith("cuda"))
