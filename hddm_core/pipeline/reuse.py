"""Content-addressed reuse of finished stages, and the one opening every stage runner shares.

`stage_key(stage, params)` hashes the stage's config (params without artifact_root and force) with
the content hashes of its inputs (upstream manifests, weights). A finished stage records
`<prefix>/_ref.json` = {key, ref}; a later call with the same key returns that ref at once, without
loading any model (`force` recomputes). The stage functions underneath skip by their own manifests as
well, so a crash between the manifest and _ref.json loses nothing. Prefect tasks use the same key
(`reusable_key`) as their cache key.

Every runner opens the same way (hddm_core.pipeline.stages):

    st = open_stage("embed", params)        # open the store, compute the key, look for a finished run
    if st.reused:
        return st.reused
    ...                                      # run the stage on st.store
    return st.remember(ref)                  # record {key, ref} for the next call
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pydantic import BaseModel, Field

from hddm_core.manifests import hash_config, read_manifest
from hddm_core.pipeline.params import DownloadParams, StageParams, TrainExpertParams
from hddm_core.storage import ArtifactStore, open_store

log = logging.getLogger(__name__)

REF_NAME = "_ref.json"
EMBEDDED_PREFIX = "embedded"
TRAINING_STAGES = {"train-expert": "expert.json", "train-router": "router.json",  # stage -> exported manifest
                   "train-monolith": "expert.json"}
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


def store_of(params: StageParams) -> ArtifactStore:
    return open_store(params.artifact_root)


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
    if stage in TRAINING_STAGES or stage == "train-homogeneous":
        return {"data": _manifest_hash(store, params.prepare_prefix, "prepare")}
    raise ValueError(f"no input rule for stage {stage!r}")


def stage_key(stage: str, params: StageParams) -> Optional[str]:
    """Config hash + input content hashes; None when an input does not exist yet (nothing to reuse)."""
    store = store_of(params)
    try:
        inputs = _inputs(stage, params, store)
    except FileNotFoundError:
        return None
    return hash_config({"stage": stage, "config": _config_of(params), "inputs": inputs})


def download_key(params: DownloadParams, embedded_hash: Optional[str]) -> Optional[str]:
    """The download's key also covers the embedded dataset it serves (built inside the stage)."""
    key = stage_key("download", params)
    return key and hash_config({"key": key, "embedded": embedded_hash})


def expert_run_prefix(params: TrainExpertParams, key: str) -> str:
    return f"{params.runs_prefix}/cluster-{params.cluster_id:03d}-{params.objective}-{key[:10]}"


def ref_prefix(stage: str, params: StageParams, key: Optional[str]) -> str:
    """Where a stage's _ref.json lives: its prefix, or for training its run folder (named by the key)."""
    if stage not in TRAINING_STAGES:
        return params.prefix
    if key is None:
        raise FileNotFoundError(f"no prepare manifest under {store_of(params).uri(params.prepare_prefix)}: "
                                "run prepare first")
    if stage == "train-monolith":
        return f"{params.runs_prefix}/monolith-{params.objective}-{key[:10]}"
    return expert_run_prefix(params, key) if stage == "train-expert" else f"{params.prefix}/run-{key[:10]}"


def reuse(store: ArtifactStore, prefix: str, key: Optional[str], force: bool, quiet: bool = False) -> Optional[StageRef]:
    """The recorded ref under prefix when its key matches and its outputs are still the ones recorded."""
    if force or key is None or not store.exists(f"{prefix}/{REF_NAME}"):
        return None
    raw = store.read_json(f"{prefix}/{REF_NAME}")
    if raw.get("key") != key:
        return None
    ref = StageRef(**raw["ref"])
    if ref.stage in TRAINING_STAGES:
        name = TRAINING_STAGES[ref.stage]
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


def remember(store: ArtifactStore, prefix: str, key: Optional[str], ref: StageRef) -> StageRef:
    ref = ref.model_copy(update={"key": key or ""})
    if key is not None:
        store.write_json(f"{prefix}/{REF_NAME}", {"key": key, "ref": ref.model_dump(mode="json")})
    return ref


def ref_from_manifest(store: ArtifactStore, stage: str, prefix: str, manifest, **extra) -> StageRef:
    return StageRef(stage=stage, uri=store.uri(prefix), prefix=prefix, content_hash=manifest.content_hash,
                    counts=dict(manifest.counts), extra=extra)


def reusable_key(stage: str, params: StageParams) -> Optional[str]:
    """The stage key when the store holds this stage's finished result under it, else None.

    What Prefect tasks use as cache keys (with the artifact root): a cache hit then always points at
    outputs that exist, never at a wiped or different store."""
    store = store_of(params)
    if stage == "download":
        embedded = read_manifest(store, EMBEDDED_PREFIX) if params.source == "embedded" else None
        key = download_key(params, embedded.content_hash if embedded else None)
    else:
        key = stage_key(stage, params)
    if key is None or reuse(store, ref_prefix(stage, params, key), key, params.force, quiet=True) is None:
        return None
    return hash_config({"root": store.root, "key": key})


# -- the shared opening ----------------------------------------------------------------------------
_STAGE_KEY = object()  # open_stage computes stage_key(stage, params) unless given a key


def recorded_ref(stage: str, params: StageParams) -> Optional[StageRef]:
    """The result a finished run of `stage` recorded for these params (its weights or outputs still as
    recorded), else None. Only reads the store: it never runs a stage."""
    key = stage_key(stage, params)
    if key is None:
        return None
    ref = reuse(store_of(params), ref_prefix(stage, params, key), key, force=False, quiet=True)
    return ref.model_copy(update={"reused": False}) if ref is not None else None


@dataclass
class OpenStage:
    """A stage about to run: its store, key and prefix, or the finished result it can reuse."""

    store: ArtifactStore
    key: Optional[str]
    prefix: str
    reused: Optional[StageRef]

    def remember(self, ref: StageRef) -> StageRef:
        return remember(self.store, self.prefix, self.key, ref)


def open_stage(stage: str, params: StageParams, *, key: Any = _STAGE_KEY,
               store: Optional[ArtifactStore] = None) -> OpenStage:
    """Open the store, compute the key, and look for a finished identical run (reused is then set).

    A training stage without prepared data raises FileNotFoundError; a forced training run starts
    from an empty run folder (its checkpoints would otherwise be resumed)."""
    store = store or store_of(params)
    key = stage_key(stage, params) if key is _STAGE_KEY else key
    prefix = ref_prefix(stage, params, key)
    reused = reuse(store, prefix, key, params.force)
    if reused is None and params.force and stage in TRAINING_STAGES:
        store.delete(prefix)
    return OpenStage(store, key, prefix, reused)
