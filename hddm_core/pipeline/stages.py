"""One plain function per pipeline stage: `run_<stage>(params) -> StageRef`.

Each opens the stage through hddm_core.pipeline.reuse (store, content-addressed key, reuse of a
finished identical run), calls the hddm_core stage function and records a small JSON-able reference
(URIs, hashes, counts). Prefect tasks wrap these; the command line calls them directly.
"""
from __future__ import annotations

import logging
from typing import Optional

from hddm_core.inference.routing import SINGLE
from hddm_core.manifests import read_manifest
from hddm_core.pipeline.params import (ClusterParams, DownloadParams, EmbedParams, EvaluateParams, PrepareParams, RecaptionParams,
                     RegisterExpertParams, StageParams, TrainExpertParams, TrainRouterParams,
                                       resolve_device)
from hddm_core.pipeline.reuse import (EMBEDDED_PREFIX, REF_NAME, Progress, StageRef, download_key, expert_run_prefix,
                                      open_stage, recorded_ref, ref_from_manifest, remember, reusable_key, stage_key,
                                      store_of)
from hddm_core.storage import ArtifactStore

log = logging.getLogger(__name__)

__all__ = ["StageRef", "STAGES", "stage_key", "reusable_key", "recorded_ref", "remember", "expert_run_prefix", "n_clusters",
           "for_landed_expert", "REF_NAME", "EMBEDDED_PREFIX", "run_download", "run_recaption", "run_embed",
           "run_cluster", "run_prepare", "run_train_expert", "run_train_router", "run_register_expert",
           "run_evaluate"]


# -- data stages ------------------------------------------------------------------------------------
def run_download(params: DownloadParams) -> StageRef:
    """Download to webdataset shards; source=embedded renders the embedded dataset, serves it on
    127.0.0.1 (allowlisted for this run only) and downloads it through img2dataset."""
    from hddm_core.data.download import DownloadConfig, run_download as download

    store = store_of(params)
    embedded_hash = None
    if params.source == "embedded":
        from hddm_core.data.embedded import EmbeddedConfig, build_embedded_dataset

        e = params.embedded
        em = build_embedded_dataset(store, EMBEDDED_PREFIX, EmbeddedConfig(
            size=e.size, styles=tuple(e.styles), limit=e.limit, groups=tuple(e.groups) if e.groups else None))
        embedded_hash = em.content_hash
    st = open_stage("download", params, key=download_key(params, embedded_hash), store=store)
    if st.reused:
        return st.reused
    cfg = dict(image_size=params.image_size, resize_mode=params.resize_mode, encode_format=params.encode_format,
               number_sample_per_shard=params.number_sample_per_shard, processes_count=params.processes_count,
               thread_count=params.thread_count)
    if params.source == "embedded":
        from hddm_core.data.embedded import write_laion_parquet
        from hddm_core.data.loopback_server import LoopbackImageServer

        with LoopbackImageServer(store, f"{EMBEDDED_PREFIX}/images") as server:
            url_list = write_laion_parquet(store, EMBEDDED_PREFIX, server.base_url, key=f"{EMBEDDED_PREFIX}/laion.parquet")
            config = DownloadConfig(**cfg, allow_hosts=(server.host_port, *params.allow_hosts))
            manifest = download(store, url_list, params.prefix, config, force=True)  # the URL list names a fresh port
    elif params.laion is not None:
        from hddm_core.data.map_stages import laion_download

        config = DownloadConfig(**cfg, allow_hosts=tuple(params.allow_hosts))
        manifest = laion_download(store, params, config)
    else:
        config = DownloadConfig(**cfg, allow_hosts=tuple(params.allow_hosts))
        manifest = download(store, params.url_list_key, params.prefix, config, force=params.force)
    return st.remember(ref_from_manifest(store, "download", params.prefix, manifest))


def run_recaption(params: RecaptionParams, executor=None) -> StageRef:
    """executor (or params.workers > 1): run as work units (hddm_core.data.map_stages)."""
    from hddm_core.data.recaption import LlavaCaptioner, PassthroughCaptioner, RecaptionConfig, recaption

    st = open_stage("recaption", params)
    if st.reused:
        return st.reused
    store = st.store
    if executor is not None or params.workers > 1:
        from hddm_core.data.map_stages import recaption_as_units

        manifest = recaption_as_units(store, params, resolve_device(params.device), executor)
        return st.remember(ref_from_manifest(store, "recaption", params.prefix, manifest, captioner=params.captioner))
    if params.captioner == "passthrough":
        captioner = PassthroughCaptioner()
    else:
        captioner = LlavaCaptioner.from_pretrained(params.llava_model, device=resolve_device(params.device),
                                                   max_new_tokens=params.max_new_tokens)
    manifest = recaption(store, params.prefix, captioner, source_prefix=params.download_prefix,
                         config=RecaptionConfig(batch_size=params.batch_size), force=params.force,
                         total=_count(store, params.download_prefix))
    return st.remember(ref_from_manifest(store, "recaption", params.prefix, manifest, captioner=params.captioner))


def _count(store: ArtifactStore, download_prefix: str) -> Optional[int]:
    m = read_manifest(store, download_prefix)
    return int(m.counts.get("success", 0)) if m is not None else None


def run_embed(params: EmbedParams, executor=None) -> StageRef:
    """executor (or params.workers > 1): run as work units (hddm_core.data.map_stages)."""
    from hddm_core.data.embed import EmbedConfig, embed
    from hddm_core.data.factories import build_embedder, embedder_description

    st = open_stage("embed", params)
    if st.reused:
        return st.reused
    store = st.store
    if executor is not None or params.workers > 1:
        from hddm_core.data.map_stages import embed_as_units

        manifest = embed_as_units(store, params, resolve_device(params.device), executor)
        return st.remember(ref_from_manifest(store, "embed", params.prefix, manifest, embedder=manifest.counts["model"]))
    device = resolve_device(params.device)
    embedder = build_embedder(embedder_description(params), device=device)
    manifest = embed(store, params.prefix, embedder, source_prefix=params.download_prefix,
                     config=EmbedConfig(batch_size=params.batch_size), force=params.force,
                     total=_count(store, params.download_prefix))
    return st.remember(ref_from_manifest(store, "embed", params.prefix, manifest, embedder=embedder.describe()["model"]))


def run_cluster(params: ClusterParams, executor=None) -> StageRef:
    """max_sample_bytes: fit on a bounded sample, assign as a map (hddm_core.data.cluster_scale)."""
    from hddm_core.data.cluster import ClusterConfig, cluster_stage
    from hddm_core.data.shards import iter_download_samples

    st = open_stage("cluster", params)
    if st.reused:
        return st.reused
    store = st.store
    config = ClusterConfig(n_clusters=params.n_clusters, level_sizes=params.level_sizes, seed=params.seed,
                           n_iter=params.n_iter, balance=params.balance)
    samples = iter_download_samples(store, params.download_prefix) if read_manifest(store, params.download_prefix) else None
    if params.max_sample_bytes is not None:
        from hddm_core.data.cluster_scale import SampleFit, cluster_stage_sampled

        fit = SampleFit(max_sample_bytes=params.max_sample_bytes, resample_steps=params.resample_steps)
        manifest = cluster_stage_sampled(store, params.prefix, params.embed_prefix, config, fit, samples=samples,
                                         executor=executor, force=params.force)
    else:
        manifest = cluster_stage(store, params.prefix, params.embed_prefix, config, samples=samples, force=params.force)
    return st.remember(ref_from_manifest(store, "cluster", params.prefix, manifest,
                                         picture=store.uri(f"{params.prefix}/clusters.png"),
                                         report_md=store.uri(f"{params.prefix}/report.md")))


def run_prepare(params: PrepareParams, executor=None) -> StageRef:
    """executor (or params.workers > 1): run as work units (hddm_core.data.map_stages)."""
    from hddm_core.data.factories import (build_latent_space, build_text_encoder, latent_description,
                                          text_description)
    from hddm_core.data.prepare import prepare_config, prepare_training_inputs

    st = open_stage("prepare", params)
    if st.reused:
        return st.reused
    store = st.store
    device = resolve_device(params.device)
    if executor is not None or params.workers > 1:
        from hddm_core.data.map_stages import prepare_as_units

        manifest = prepare_as_units(store, params, device, executor)
        return st.remember(ref_from_manifest(store, "prepare", params.prefix, manifest))
    latent = build_latent_space(latent_description(params), device=device)
    text = build_text_encoder(text_description(params), device=device)
    manifest = prepare_training_inputs(
        store, params.prefix, params.cluster_prefix, latent, text, source_prefix=params.download_prefix,
        captions_prefix=params.recaption_prefix if params.use_recaption else None,
        config=prepare_config(params), force=params.force,
        total=_count(store, params.download_prefix))
    return st.remember(ref_from_manifest(store, "prepare", params.prefix, manifest))


def n_clusters(params: PrepareParams | StageParams, prepare_prefix: str = "prepare") -> int:
    """K from a finished prepare stage (the pipeline fans out over it)."""
    from hddm_core.data.cluster_data import training_inputs_info

    return int(training_inputs_info(store_of(params), prepare_prefix)["n_clusters"])


# -- training -----------------------------------------------------------------------------------------
def _latent_fields(info: dict) -> dict:
    lat = info["latent"]
    channels, size = int(lat["latent_shape"][0]), int(lat["latent_shape"][1])
    return dict(latent_space=lat["space"], latent_channels=channels, latent_size=size,
                latent_scale=float(lat["scale"]), image_resolution=int(lat["resolution"]))


def _run_chunks(loop, total: int, chunk: int, progress: Progress):
    """loop.run in chunks (each ends with a checkpoint) so callers see progress; resumes first."""
    loop.resume()
    result = None
    while True:
        target = min(total, (loop.step // chunk + 1) * chunk)
        result = loop.run(until_step=target)
        if progress is not None:
            progress(loop.step, total)
        if result.status != "stopped" or loop.step >= total:
            return result


def run_train_expert(params: TrainExpertParams, progress: Progress = None) -> StageRef:
    """Train (or resume from its latest checkpoint) one expert on one cluster; export it (EMA weights)."""
    from hddm_core.data.cluster_data import ClusterDataset

    st = open_stage("train-expert", params)
    if st.reused:
        return st.reused
    dataset = ClusterDataset(st.store, params.prepare_prefix, params.cluster_id)
    return train_expert_on(st, params, dataset, progress)


def train_expert_on(st, params: TrainExpertParams, dataset, progress: Progress = None, *, stage: str = "train-expert",
                    training=None, extra: Optional[dict] = None) -> StageRef:
    """The body of every expert-training stage, after open_stage: train on `dataset` (one cluster, or
    all of them for the monolith baseline), export the EMA weights, remember the ref under `stage`.
    training: the loop settings (default params.training; the monolith passes K times the steps)."""
    from hddm_core.data.cluster_data import training_inputs_info
    from hddm_core.pipeline.expert_init import resolve_init
    from hddm_core.training.config import ExpertTrainConfig
    from hddm_core.training.expert_trainer import build_loop, export_expert

    training = training or params.training
    store, run = st.store, st.prefix
    info = training_inputs_info(store, params.prepare_prefix)
    batch = min(training.batch_size, len(dataset))  # a small cluster still trains (drop_last)
    run_store = store.child(run)
    latent, text = _latent_fields(info), dict(text_encoder=info["text"]["encoder"], text_dim=int(info["text"]["width"]))
    init = resolve_init(params.init, run_store, objective=params.objective, architecture=training.architecture,
                        text_dim=text["text_dim"], manifest_fields=dict(
                            latent_space=latent["latent_space"], latent_scale=latent["latent_scale"],
                            image_resolution=latent["image_resolution"], text_encoder=text["text_encoder"],
                            data_hash=f"dit-import-for:{info['data_hash']}"))
    config = ExpertTrainConfig.from_params(
        training, params, device=resolve_device(training.device), batch_size=batch, progress=False,
        **latent, **text, init=init, clustering_version=params.clustering_version or info.get("clustering_version"))
    loop = build_loop(config, dataset, run_store)
    result = _run_chunks(loop, config.steps, config.checkpoint_interval, progress)
    if result.status != "completed":
        raise RuntimeError(f"expert training for cluster {params.cluster_id} ended {result.status!r} at step "
                           f"{result.step}; rerun to resume from {run_store.uri('checkpoints')}")
    uri = export_expert(loop, config, run_store, data_hash=info["data_hash"])
    manifest = run_store.read_json("expert/expert.json")
    ref = StageRef(stage=stage, uri=uri, prefix=f"{run}/expert", content_hash=manifest["weights_sha256"],
                   counts={"steps": result.step, "samples": len(dataset),
                           "final_loss": result.losses[-1] if result.losses else None},
                   extra={"cluster_id": params.cluster_id, "objective": params.objective, "init": params.init,
                          "schedule": manifest["schedule"], "time_input": manifest["time_input"],
                          "loss_curve": run_store.uri("expert/loss_curve.png"), **(extra or {})})
    return st.remember(ref)


def run_train_router(params: TrainRouterParams, progress: Progress = None) -> StageRef:
    from hddm_core.data.cluster_data import RouterDataset, training_inputs_info
    from hddm_core.training.config import RouterTrainConfig
    from hddm_core.training.router_trainer import build_router_loop, evaluate_router, save_router_artifacts

    st = open_stage("train-router", params)
    if st.reused:
        return st.reused
    store, run = st.store, st.prefix
    info = training_inputs_info(store, params.prepare_prefix)
    dataset = RouterDataset(store, params.prepare_prefix)
    batch = min(params.training.batch_size, len(dataset))
    config = RouterTrainConfig.from_params(params.training, params, device=resolve_device(params.training.device),
                                           batch_size=batch, progress=False, **_latent_fields(info),
                                           num_clusters=int(info["n_clusters"]))
    run_store = store.child(run)
    loop = build_router_loop(config, dataset, run_store)
    result = _run_chunks(loop, config.steps, config.checkpoint_interval, progress)
    if result.status != "completed":
        raise RuntimeError(f"router training ended {result.status!r} at step {result.step}; rerun to resume")
    import copy

    router = copy.deepcopy(loop.model).cpu()
    router.load_state_dict(loop.ema.averaged_state_dict(loop.model))
    router.eval()
    report = evaluate_router(router, dataset, config.num_clusters, buckets=config.eval_buckets,
                             per_bucket=config.eval_samples_per_bucket, path=config.path, time_input=config.time_input,
                             batch_size=config.batch_size, seed=config.seed + 1000)
    report["eval_split"] = "training samples (fresh noise and t)"
    uri = save_router_artifacts(loop, router, config, run_store, report, info["data_hash"])
    manifest = run_store.read_json("router/router.json")
    accuracy = {f"{b['t_lo']:.1f}-{b['t_hi']:.1f}": round(b["accuracy"], 4) for b in report["buckets"]}
    ref = StageRef(stage="train-router", uri=uri, prefix=f"{run}/router", content_hash=manifest["weights_sha256"],
                   counts={"steps": result.step, "samples": len(dataset), "accuracy_by_t": accuracy},
                   extra={"evaluation_png": run_store.uri("router/evaluation.png")})
    return st.remember(ref)


# -- experts: registration and evaluation ---------------------------------------------------------
def run_register_expert(params: RegisterExpertParams) -> StageRef:
    """Validate an untrusted expert (schema, shapes, hash, finite values, smoke forward) and store it."""
    from hddm_core.contrib.registration import register_expert

    store = store_of(params)
    result = register_expert(store, params.source, params.experts_prefix, params.name)
    return StageRef(stage="register-expert", uri=result["uri"], prefix=result["prefix"],
                    content_hash=result["weights_sha256"], key=result["weights_sha256"],
                    counts={"checks": result["checks"]}, reused=result["already_registered"],
                    extra={"cluster_id": result["cluster_id"], "objective": result["objective"]})


def for_landed_expert(params: EvaluateParams, expert_uri: str) -> EvaluateParams:
    """The evaluation an expert-landed trigger asks for: that expert alone, on its own cluster's prompts."""
    return params.model_copy(update={"experts": [expert_uri], "router": None, "routing_modes": [SINGLE]})


def run_evaluate(params: EvaluateParams, progress: Progress = None) -> StageRef:
    """Sample every routing mode on identical seeds and prompts; metrics, grids, plots, report.md.

    Idempotent per (experts' weights, router, data, config): an existing evaluation manifest is
    returned without sampling (the expert-landed trigger may fire more than once)."""
    from hddm_core.pipeline.evaluation import evaluate

    store = store_of(params)
    m = evaluate(store, params, progress=progress)
    return StageRef(stage="evaluate", uri=store.uri(m["prefix"]), prefix=m["prefix"], content_hash=m["content_hash"],
                    key=m["key"], counts=m["counts"], reused=m["reused"],
                    extra={"report": store.uri(f"{m['prefix']}/report.md"), "metrics": m["metrics"]})


STAGES = {"download": run_download, "recaption": run_recaption, "embed": run_embed, "cluster": run_cluster,
          "prepare": run_prepare, "train-expert": run_train_expert, "train-router": run_train_router,
          "register-expert": run_register_expert, "evaluate": run_evaluate}


def _baselines() -> None:  # the baseline stages live in baselines.py (which imports this module's body)
    from hddm_core.pipeline.baselines import HOMOGENEOUS, MONOLITH, run_train_homogeneous, run_train_monolith

    STAGES.update({MONOLITH: run_train_monolith, HOMOGENEOUS: run_train_homogeneous})


_baselines()
