"""Embed, recaption and prepare stage parameters -> a map over work units (hddm_core.data.coordinator);
download parameters with `laion` -> parts as units (hddm_core.data.download_laion).

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
    from hddm_core.data.factories import embedder_description

    return ModelSpec("hddm_core.data.factories:build_embedder",
                     {"description": embedder_description(params), "device": device})


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


def prepare_spec(params, device: str) -> ModelSpec:
    from hddm_core.data.factories import latent_description, text_description
    from hddm_core.data.prepare_units import encoders_spec

    return encoders_spec("hddm_core.data.factories:build_latent_space",
                         {"description": latent_description(params), "device": device},
                         "hddm_core.data.factories:build_text_encoder",
                         {"description": text_description(params), "device": device})


def prepare_as_units(store: ArtifactStore, params, device: str, executor=None):
    from hddm_core.data.prepare import prepare_config
    from hddm_core.data.prepare_join import prepare_units

    source = DownloadSource(store.root, store.storage_options, params.download_prefix)
    pool = None if executor is not None else ProcessPool(params.workers)
    try:
        return prepare_units(store, params.prefix, params.cluster_prefix, prepare_spec(params, device), source,
                             captions_prefix=params.recaption_prefix if params.use_recaption else None,
                             config=prepare_config(params), unit_size=params.unit_size,
                             executor=executor or pool, gpu=device.startswith("cuda"), force=params.force)
    finally:
        if pool is not None:
            pool.close()


def laion_download(store: ArtifactStore, params, config):
    """source=parquet with `laion` set: filter, split into parts, one img2dataset run per part."""
    from hddm_core.data.download_laion import LaionFilter, RecaptionSubset, run_laion_download

    laion = params.laion
    filters = LaionFilter(min_aesthetic=laion.min_aesthetic, min_width=laion.min_width, min_height=laion.min_height,
                          min_caption_chars=laion.min_caption_chars, max_caption_chars=laion.max_caption_chars)
    subset = RecaptionSubset(count=laion.recaption_count, score=laion.recaption_score)
    pool = ProcessPool(laion.workers) if laion.workers > 1 else None  # None: parts in this process
    try:
        return run_laion_download(store, params.url_list_key, params.prefix, config, filters, subset,
                                  rows_per_part=laion.rows_per_part, executor=pool, force=params.force)
    finally:
        if pool is not None:
            pool.close()
