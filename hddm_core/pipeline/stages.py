"""One plain function per pipeline stage: `run_<stage>(params) -> StageRef`.

Each opens the artifact store, calls the hddm_core stage function and returns a small JSON-able
reference (URIs, hashes, counts). Prefect tasks wrap these; the command line calls them directly.

Content-addressed reuse: `stage_key(stage, params)` hashes the stage's config (params without
artifact_root and force) with the content hashes of its inputs (upstream manifests, weights). A
finished stage records `<prefix>/_ref.json` = {key, ref}; a later call with the same key returns that
ref at once, without loading any model (`force` recomputes). The stage functions underneath skip
by their own manifests as well, so a crash between the manifest and _ref.json loses nothing.
Prefect tasks use the same key as their cache key.
"""
from __future__ import annotations

import logging
import uuid
from typing import Any, Callable, Optional

from pydantic import BaseModel, Field

from hddm_core.manifests import hash_config, read_manifest
from hddm_core.pipeline.params import (ClusterParams, DownloadParams, EmbedParams, EvaluateParams, PrepareParams, RecaptionParams,
                     RegisterExpertParams, StageParams, TrainExpertParams, TrainRouterParams)
from hddm_core.storage import ArtifactStore, open_store

log = logging.getLogger(__name__)

REF_NAME = "_ref.json"
EMBEDDED_PREFIX = "embedded"
EXPERT_LANDED_EVENT = "hddm.expert.landed"
# uuid5 namespace for event ids: the same expert weights always give the same event id.
EVENT_NAMESPACE = uuid.UUID("6f1c1f3e-3c1e-5b7a-9d1a-4c8f2e0b7a11")
Progress = Optional[Callable[[int, int], None]]  # (done, total)


class StageRef(BaseModel):
    """What a stage hands downstream: where its outputs are and what they hash to."""

    stage: str
    uri: str  # the stage's output prefix (or the expert/router folder)
    prefix: str  # the same, relative to the artifact root
    content_hash: str  # what downstream stages record as this input
    key: str = ""  # stage_key: config + inputs
    counts: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    reused: bool = False  # True when an earlier identical run's result was returned


def _store(params: StageParams) -> ArtifactStore:
    return open_store(params.artifact_root)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _manifest_hash(store: ArtifactStore, prefix: str, stage: str) -> str:
    m = read_manifest(store, prefix)
    if m is None:
        raise FileNotFoundError(f"no {stage} manifest under {store.uri(prefix)}: run the {stage} stage first")
    return m.content_hash


def _config_of(params: BaseModel) -> dict:
    return params.model_dump(mode="json", exclude={"artifact_root", "force"})


def _inputs(stage: str, params: StageParams, store: ArtifactStore) -> dict:
    """Content hashes of a stage's inputs (raises FileNotFoundError when an input is missing)."""
    if stage == "download":
        if params.source == "parquet":
            from hddm_core.manifests import hash_store_object

            return {"url_list": hash_store_object(store, params.url_list_key)}
        return {}  # the embedded dataset is built (or reused) inside the stage; its config is in the key
    if stage in ("recaption", "embed"):
        return {"samples": _manifest_hash(store, params.download_prefix, "download")}
    if stage == "cluster":
        return {"embeddings": _manifest_hash(store, params.embed_prefix, "embed")}
    if stage == "prepare":
        out = {"samples": _manifest_hash(store, params.download_prefix, "download"),
               "clusters": _manifest_hash(store, params.cluster_prefix, "cluster")}
        if params.use_recaption:
            out["captions"] = _manifest_hash(store, params.recaption_prefix, "recaption")
        return out
    if stage in ("train-expert", "train-router"):
        return {"data": _manifest_hash(store, params.prepare_prefix, "prepare")}
    raise ValueError(f"no input rule for stage {stage!r}")


def stage_key(stage: str, params: StageParams) -> Optional[str]:
    """Config hash + input content hashes; None when an input does not exist yet (nothing to reuse)."""
    store = _store(params)
    try:
        inputs = _inputs(stage, params, store)
    except FileNotFoundError:
        return None
    return hash_config({"stage": stage, "config": _config_of(params), "inputs": inputs})


def _reuse(store: ArtifactStore, prefix: str, key: Optional[str], force: bool, quiet: bool = False) -> Optional[StageRef]:
    if force or key is None or not store.exists(f"{prefix}/{REF_NAME}"):
        return None
    raw = store.read_json(f"{prefix}/{REF_NAME}")
    if raw.get("key") != key:
        return None
    ref = StageRef(**raw["ref"])
    if ref.stage in ("train-expert", "train-router"):
        name = "expert.json" if ref.stage == "train-expert" else "router.json"
        if not store.exists(f"{ref.prefix}/{name}") or store.read_json(f"{ref.prefix}/{name}").get(
                "weights_sha256") != ref.content_hash:
            return None  # the exported weights changed or vanished: recompute
    else:
        m = read_manifest(store, ref.prefix)
        if m is None or m.content_hash != ref.content_hash:
            return None  # the outputs changed under us: recompute
    if not quiet:
        log.info("%s: reusing finished stage at %s (key %s)", ref.stage, ref.uri, key[:12])
    return ref.model_copy(update={"reused": True})


def _remember(store: ArtifactStore, prefix: str, key: Optional[str], ref: StageRef) -> StageRef:
    ref = ref.model_copy(update={"key": key or ""})
    if key is not None:
        store.write_json(f"{prefix}/{REF_NAME}", {"key": key, "ref": ref.model_dump(mode="json")})
    return ref


def _ref_from_manifest(store: ArtifactStore, stage: str, prefix: str, manifest, **extra) -> StageRef:
    return StageRef(stage=stage, uri=store.uri(prefix), prefix=prefix, content_hash=manifest.content_hash,
                    counts=dict(manifest.counts), extra=extra)


def _download_key(params: DownloadParams, embedded_hash: Optional[str]) -> Optional[str]:
    key = stage_key("download", params)
    return key and hash_config({"key": key, "embedded": embedded_hash})


def _ref_prefix(stage: str, params: StageParams, key: str) -> str:
    if stage == "train-expert":
        return expert_run_prefix(params, key)
    if stage == "train-router":
        return f"{params.prefix}/run-{key[:10]}"
    return params.prefix


def reusable_key(stage: str, params: StageParams) -> Optional[str]:
    """The stage key when the store holds this stage's finished result under it, else None.

    What Prefect tasks use as cache keys (with the artifact root): a cache hit then always points at
    outputs that exist, never at a wiped or different store."""
    store = _store(params)
    if stage == "download":
        embedded = read_manifest(store, EMBEDDED_PREFIX) if params.source == "embedded" else None
        key = _download_key(params, embedded.content_hash if embedded else None)
    else:
        key = stage_key(stage, params)
    if key is None or _reuse(store, _ref_prefix(stage, params, key), key, params.force, quiet=True) is None:
        return None
    return hash_config({"root": store.root, "key": key})


# -- data stages ------------------------------------------------------------------------------------
def run_download(params: DownloadParams) -> StageRef:
    """Download to webdataset shards; source=embedded renders the embedded dataset, serves it on
    127.0.0.1 (allowlisted for this run only) and downloads it through img2dataset."""
    from hddm_core.data.download import DownloadConfig, run_download as download

    store = _store(params)
    embedded_hash = None
    if params.source == "embedded":
        from hddm_core.data.embedded import EmbeddedConfig, build_embedded_dataset

        e = params.embedded
        em = build_embedded_dataset(store, EMBEDDED_PREFIX, EmbeddedConfig(
            size=e.size, styles=tuple(e.styles), limit=e.limit, groups=tuple(e.groups) if e.groups else None))
        embedded_hash = em.content_hash
    key = _download_key(params, embedded_hash)
    if (ref := _reuse(store, params.prefix, key, params.force)) is not None:
        return ref
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
    else:
        config = DownloadConfig(**cfg, allow_hosts=tuple(params.allow_hosts))
        manifest = download(store, params.url_list_key, params.prefix, config, force=params.force)
    return _remember(store, params.prefix, key, _ref_from_manifest(store, "download", params.prefix, manifest))


def run_recaption(params: RecaptionParams) -> StageRef:
    from hddm_core.data.recaption import LlavaCaptioner, PassthroughCaptioner, RecaptionConfig, recaption

    store = _store(params)
    key = stage_key("recaption", params)
    if (ref := _reuse(store, params.prefix, key, params.force)) is not None:
        return ref
    if params.captioner == "passthrough":
        captioner = PassthroughCaptioner()
    else:
        captioner = LlavaCaptioner.from_pretrained(params.llava_model, device=_device(params.device),
                                                   max_new_tokens=params.max_new_tokens)
    manifest = recaption(store, params.prefix, captioner, source_prefix=params.download_prefix,
                         config=RecaptionConfig(batch_size=params.batch_size), force=params.force,
                         total=_count(store, params.download_prefix))
    return _remember(store, params.prefix, key, _ref_from_manifest(store, "recaption", params.prefix, manifest,
                                                                   captioner=params.captioner))


def _count(store: ArtifactStore, download_prefix: str) -> Optional[int]:
    m = read_manifest(store, download_prefix)
    return int(m.counts.get("success", 0)) if m is not None else None


def run_embed(params: EmbedParams) -> StageRef:
    from hddm_core.data.embed import EmbedConfig, embed
    from hddm_core.data.factories import build_embedder

    store = _store(params)
    key = stage_key("embed", params)
    if (ref := _reuse(store, params.prefix, key, params.force)) is not None:
        return ref
    device = _device(params.device)
    embedder = build_embedder({"backend": "inception"} if params.embedder == "inception-v3-fid"
                              else {"backend": "dinov2", "model": params.dinov2_model}, device=device)
    manifest = embed(store, params.prefix, embedder, source_prefix=params.download_prefix,
                     config=EmbedConfig(batch_size=params.batch_size), force=params.force,
                     total=_count(store, params.download_prefix))
    return _remember(store, params.prefix, key, _ref_from_manifest(store, "embed", params.prefix, manifest,
                                                                   embedder=embedder.describe()["model"]))


def run_cluster(params: ClusterParams) -> StageRef:
    from hddm_core.data.cluster import ClusterConfig, cluster_stage
    from hddm_core.data.shards import iter_download_samples

    store = _store(params)
    key = stage_key("cluster", params)
    if (ref := _reuse(store, params.prefix, key, params.force)) is not None:
        return ref
    config = ClusterConfig(n_clusters=params.n_clusters, level_sizes=params.level_sizes, seed=params.seed,
                           n_iter=params.n_iter, balance=params.balance)
    samples = iter_download_samples(store, params.download_prefix) if read_manifest(store, params.download_prefix) else None
    manifest = cluster_stage(store, params.prefix, params.embed_prefix, config, samples=samples, force=params.force)
    ref = _ref_from_manifest(store, "cluster", params.prefix, manifest, picture=store.uri(f"{params.prefix}/clusters.png"),
                             report_md=store.uri(f"{params.prefix}/report.md"))
    return _remember(store, params.prefix, key, ref)


def run_prepare(params: PrepareParams) -> StageRef:
    from hddm_core.data.factories import MINILM, build_latent_space, build_text_encoder
    from hddm_core.data.prepare import PrepareConfig, prepare_training_inputs

    store = _store(params)
    key = stage_key("prepare", params)
    if (ref := _reuse(store, params.prefix, key, params.force)) is not None:
        return ref
    device = _device(params.device)
    latent = build_latent_space({"space": params.latent_space, "resolution": params.resolution,
                                 "model": params.vae_model}, device=device)
    text = build_text_encoder({"encoder": MINILM if params.text_encoder == "minilm" else params.clip_model,
                               "max_length": params.max_length}, device=device)
    manifest = prepare_training_inputs(
        store, params.prefix, params.cluster_prefix, latent, text, source_prefix=params.download_prefix,
        captions_prefix=params.recaption_prefix if params.use_recaption else None,
        config=PrepareConfig(batch_size=params.batch_size), force=params.force,
        total=_count(store, params.download_prefix))
    return _remember(store, params.prefix, key, _ref_from_manifest(store, "prepare", params.prefix, manifest))


def n_clusters(params: PrepareParams | StageParams, prepare_prefix: str = "prepare") -> int:
    """K from a finished prepare stage (the pipeline fans out over it)."""
    from hddm_core.data.cluster_data import training_inputs_info

    return int(training_inputs_info(_store(params), prepare_prefix)["n_clusters"])


def cluster_sizes(params: StageParams, prepare_prefix: str = "prepare") -> dict[int, int]:
    from hddm_core.data.cluster_data import training_inputs_info

    info = training_inputs_info(_store(params), prepare_prefix)
    return {int(c): int(n) for c, n in info["clusters"].items()}


# -- training -----------------------------------------------------------------------------------------
def _latent_fields(info: dict) -> dict:
    lat = info["latent"]
    channels, size = int(lat["latent_shape"][0]), int(lat["latent_shape"][1])
    return dict(latent_space=lat["space"], latent_channels=channels, latent_size=size,
                latent_scale=float(lat["scale"]), image_resolution=int(lat["resolution"]))


def _loop_fields(t, device: str, batch_size: int) -> dict:
    return dict(steps=t.steps, batch_size=batch_size, lr=t.lr, warmup_steps=t.warmup_steps, ema_decay=t.ema_decay,
                checkpoint_interval=t.checkpoint_interval, seed=t.seed, device=device, precision=t.precision,
                architecture=t.architecture, progress=False)


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


def expert_run_prefix(params: TrainExpertParams, key: str) -> str:
    return f"{params.runs_prefix}/cluster-{params.cluster_id:03d}-{params.objective}-{key[:10]}"


def run_train_expert(params: TrainExpertParams, progress: Progress = None) -> StageRef:
    """Train (or resume from its latest checkpoint) one expert on one cluster; export it (EMA weights)."""
    from hddm_core.data.cluster_data import ClusterDataset, training_inputs_info
    from hddm_core.training.config import ExpertTrainConfig
    from hddm_core.training.expert_trainer import build_loop, export_expert

    store = _store(params)
    key = stage_key("train-expert", params)
    if key is None:
        raise FileNotFoundError(f"no prepare manifest under {store.uri(params.prepare_prefix)}: run prepare first")
    run = expert_run_prefix(params, key)
    if (ref := _reuse(store, run, key, params.force)) is not None:
        return ref
    if params.force:
        store.delete(run)
    info = training_inputs_info(store, params.prepare_prefix)
    dataset = ClusterDataset(store, params.prepare_prefix, params.cluster_id)
    batch = min(params.training.batch_size, len(dataset))  # a small cluster still trains (drop_last)
    config = ExpertTrainConfig(**_loop_fields(params.training, _device(params.training.device), batch),
                               **_latent_fields(info), cluster_id=params.cluster_id, objective=params.objective,
                               text_encoder=info["text"]["encoder"], text_dim=int(info["text"]["width"]),
                               caption_dropout=params.caption_dropout,
                               clustering_version=params.clustering_version or info.get("clustering_version"))
    run_store = store.child(run)
    loop = build_loop(config, dataset, run_store)
    result = _run_chunks(loop, config.steps, config.checkpoint_interval, progress)
    if result.status != "completed":
        raise RuntimeError(f"expert training for cluster {params.cluster_id} ended {result.status!r} at step "
                           f"{result.step}; rerun to resume from {run_store.uri('checkpoints')}")
    uri = export_expert(loop, config, run_store, data_hash=info["data_hash"])
    manifest = run_store.read_json("expert/expert.json")
    ref = StageRef(stage="train-expert", uri=uri, prefix=f"{run}/expert", content_hash=manifest["weights_sha256"],
                   counts={"steps": result.step, "samples": len(dataset),
                           "final_loss": result.losses[-1] if result.losses else None},
                   extra={"cluster_id": params.cluster_id, "objective": params.objective,
                          "loss_curve": run_store.uri("expert/loss_curve.png")})
    return _remember(store, run, key, ref)


def run_train_router(params: TrainRouterParams, progress: Progress = None) -> StageRef:
    from hddm_core.data.cluster_data import RouterDataset, training_inputs_info
    from hddm_core.training.config import RouterTrainConfig
    from hddm_core.training.router_trainer import build_router_loop, evaluate_router, save_router_artifacts

    store = _store(params)
    key = stage_key("train-router", params)
    if key is None:
        raise FileNotFoundError(f"no prepare manifest under {store.uri(params.prepare_prefix)}: run prepare first")
    run = f"{params.prefix}/run-{key[:10]}"
    if (ref := _reuse(store, run, key, params.force)) is not None:
        return ref
    if params.force:
        store.delete(run)
    info = training_inputs_info(store, params.prepare_prefix)
    dataset = RouterDataset(store, params.prepare_prefix)
    batch = min(params.training.batch_size, len(dataset))
    config = RouterTrainConfig(**_loop_fields(params.training, _device(params.training.device), batch),
                               **_latent_fields(info), num_clusters=int(info["n_clusters"]),
                               time_sampling=params.time_sampling, eval_samples_per_bucket=params.eval_samples_per_bucket)
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
    return _remember(store, run, key, ref)


# -- experts: registration and evaluation ---------------------------------------------------------
def landed_event_id(weights_sha256: str) -> str:
    """Deterministic event id for an expert landing: repeated emissions are one event to Prefect."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{EXPERT_LANDED_EVENT}:{weights_sha256}"))


def run_register_expert(params: RegisterExpertParams) -> StageRef:
    """Validate an untrusted expert (schema, shapes, hash, finite values, smoke forward) and store it."""
    from hddm_core.contrib.registration import register_expert

    store = _store(params)
    result = register_expert(store, params.source, params.experts_prefix, params.name)
    return StageRef(stage="register-expert", uri=result["uri"], prefix=result["prefix"],
                    content_hash=result["weights_sha256"], key=result["weights_sha256"],
                    counts={"checks": result["checks"]}, reused=result["already_registered"],
                    extra={"cluster_id": result["cluster_id"], "objective": result["objective"],
                           "event_id": landed_event_id(result["weights_sha256"])})


def for_landed_expert(params: EvaluateParams, expert_uri: str) -> EvaluateParams:
    """The evaluation an expert-landed trigger asks for: that expert alone, on its own cluster's prompts."""
    return params.model_copy(update={"experts": [expert_uri], "router": None, "routing_modes": ["single"]})


def run_evaluate(params: EvaluateParams, progress: Progress = None) -> StageRef:
    """Sample every routing mode on identical seeds and prompts; metrics, grids, plots, report.md.

    Idempotent per (experts' weights, router, data, config): an existing evaluation manifest is
    returned without sampling (the expert-landed trigger may fire more than once)."""
    from hddm_core.pipeline.evaluation import evaluate

    store = _store(params)
    m = evaluate(store, params, progress=progress)
    return StageRef(stage="evaluate", uri=store.uri(m["prefix"]), prefix=m["prefix"], content_hash=m["content_hash"],
                    key=m["key"], counts=m["counts"], reused=m["reused"],
                    extra={"report": store.uri(f"{m['prefix']}/report.md"), "metrics": m["metrics"]})


STAGES = {"download": run_download, "recaption": run_recaption, "embed": run_embed, "cluster": run_cluster,
          "prepare": run_prepare, "train-expert": run_train_expert, "train-router": run_train_router,
          "register-expert": run_register_expert, "evaluate": run_evaluate}
