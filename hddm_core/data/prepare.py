"""Per-cluster training inputs: latents and token-level text embeddings, computed once, sharded.

Input: samples (a download stage prefix or an iterable of Sample), a finished cluster stage
(key -> cluster), optionally a recaption stage (new captions; otherwise the original ones).
Each sample is encoded once and routed to its cluster's stream and to the router stream:

    cluster_<c>/<index>.safetensors  latents [N,C,H,W] f16, latent_std (VAE only), text_tokens
                                     [N,L,D] f16 (L = longest caption of the shard), text_mask [N,L]
                                     u8; metadata: keys, captions (JSON lists)
    router/<index>.safetensors       latents, latent_std (VAE only), labels [N] i64; metadata: keys
    holdout_<c>/<index>.safetensors  the held-out split (hddm_core.data.holdout), cluster stream format;
                                     a held-out sample is in no cluster_<c> or router shard
    null_text.safetensors            the null caption's tokens [L,D] and mask (classifier-free guidance)
    _manifest.json                   config names latent space, scale, resolution, latent shape, text
                                     encoder, width and max_length: experts and contributors must match them
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from hddm_core.storage import ArtifactStore
from hddm_core.data.sharded_stage import ShardedStage, require_manifest, run_batched, sample_source
from hddm_core.data.safetensors_bytes import canonical_safetensors
from hddm_core.data.holdout import HOLDOUT_PREFIX, HoldoutRule, holdout_stream, select_holdout
from hddm_core.data.text_encoders import NULL_CAPTION

log = logging.getLogger(__name__)

STAGE = "prepare"
ROUTER_STREAM = "router"
NULL_TEXT = "null_text.safetensors"


def cluster_stream(cluster: int) -> str:
    return f"cluster_{int(cluster):03d}"


@dataclass
class PrepareConfig:
    batch_size: int = 32
    shard_size: int = 1024
    holdout_per_cluster: int = 0  # the held-out split (hddm_core.data.holdout); 0 = none
    holdout_max_fraction: float = 0.25
    holdout_seed: int = 0

    def validate(self) -> "PrepareConfig":
        for name in ("batch_size", "shard_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        self.holdout().validate()
        return self

    def holdout(self) -> HoldoutRule:
        return HoldoutRule(int(self.holdout_per_cluster), float(self.holdout_max_fraction), int(self.holdout_seed))


def prepare_config(params) -> PrepareConfig:
    """The stage's config from its parameters (hddm_core.pipeline.params_data.PrepareParams)."""
    return PrepareConfig(batch_size=params.batch_size, holdout_per_cluster=params.holdout_per_cluster,
                         holdout_max_fraction=params.holdout_max_fraction, holdout_seed=params.holdout_seed)


def _trim(tokens, mask):
    """Per-sample tokens cut to their real length (right padding: the mask is a prefix of ones)."""
    out = []
    for t, m in zip(tokens, mask):
        n = int(m.sum())
        if not bool(m[:n].all()):
            raise ValueError("text encoder mask is not right-padded; cannot trim tokens")
        out.append(t[:n].numpy().astype(np.float16))
    return out


def _pad_tokens(token_list: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    length, width = max(len(t) for t in token_list), token_list[0].shape[1]
    tokens = np.zeros((len(token_list), length, width), np.float16)
    mask = np.zeros((len(token_list), length), np.uint8)
    for i, t in enumerate(token_list):
        tokens[i, :len(t)], mask[i, :len(t)] = t, 1
    return tokens, mask


def _check_f16(name: str, array: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(array, dtype=np.float16)  # safetensors writes raw C-order bytes
    if not np.isfinite(out).all():
        raise ValueError(f"{name} overflow float16; check the latent scale")
    return out


def prepare_training_inputs(store: ArtifactStore, out_prefix: str, cluster_prefix: str, latent_space, text_encoder,
                            *, source_prefix: str | None = None, samples: Iterable | None = None,
                            input_hash: str | None = None, captions_prefix: str | None = None,
                            config: PrepareConfig | None = None, force: bool = False, total: int | None = None):
    """Encode every clustered sample once into its cluster's shards and the router shards."""
    from hddm_core.data.cluster import read_assignments
    from hddm_core.data.recaption import read_captions

    config = (config or PrepareConfig()).validate()
    items, inputs = sample_source(store, source_prefix, samples, input_hash)
    inputs = stage_inputs(store, inputs, cluster_prefix, captions_prefix)
    captions = {}
    if captions_prefix is not None:
        captions = read_captions(store, captions_prefix)  # refuses captions of a random-init model
    full_config = stage_config(store, cluster_prefix, captions_prefix, latent_space.describe(),
                               text_encoder.describe(), config)
    stage = ShardedStage(store, out_prefix, STAGE, full_config, inputs, config.shard_size, force)
    if (done := stage.already_completed()) is not None:
        log.info("prepare: %s already complete, skipped", store.uri(out_prefix))
        return done
    stage.begin()
    assignments = read_assignments(store, cluster_prefix)
    held = select_holdout(assignments, config.holdout())
    stats = {"unclustered": 0, "caption_fallback": 0}

    def caption_of(sample) -> str:
        if not captions:
            return sample.caption
        if sample.key not in captions:
            stats["caption_fallback"] += 1
            return sample.caption
        return captions[sample.key]

    def route(sample) -> list[str]:
        if sample.key not in assignments:
            stats["unclustered"] += 1
            return []
        if sample.key in held:  # never trained on: in no cluster or router shard
            return [holdout_stream(held[sample.key])]
        return [cluster_stream(assignments[sample.key]), ROUTER_STREAM]

    def compute(batch):
        return encode_batch(latent_space, text_encoder, [s.image for s in batch], [caption_of(s) for s in batch])

    def record(stream, sample, result):
        mean, std, tokens, text = result
        if stream == ROUTER_STREAM:
            return mean, std, assignments[sample.key]
        return mean, std, tokens, text

    seen = run_batched(stage, items, route, compute, record, lambda stream, _, rows: flush_rows(stream, rows),
                       config.batch_size, "prepare", total)
    store.write_bytes(f"{out_prefix}/{NULL_TEXT}", null_text_bytes(text_encoder))
    return stage.finish(stage_counts(seen, stats, stage.stream_counts(), full_config["n_clusters"]),
                        extra_outputs=[NULL_TEXT])


def encode_batch(latent_space, text_encoder, images: list, texts: list[str]) -> list[tuple]:
    """(latent mean, latent std or None, tokens [L_i, D] f16 cut to the caption, caption) per sample."""
    latents = latent_space.encode(images)
    tokens, mask = text_encoder.encode(texts)
    mean = latents["mean"].numpy()
    std = latents["std"].numpy() if "std" in latents else [None] * len(images)
    return list(zip(mean, std, _trim(tokens, mask), texts))


def stage_inputs(store: ArtifactStore, inputs: dict, cluster_prefix: str, captions_prefix: str | None) -> dict:
    """The stage's inputs: the samples' hash, the cluster stage's and (optionally) the recaption stage's."""
    inputs = {**inputs, "clusters": require_manifest(store, cluster_prefix, "cluster").content_hash}
    if captions_prefix is not None:
        inputs["captions"] = require_manifest(store, captions_prefix, "recaption").content_hash
    return inputs


def stage_config(store: ArtifactStore, cluster_prefix: str, captions_prefix: str | None, latent: dict, text: dict,
                 config: PrepareConfig) -> dict:
    """The stage's config (the run fingerprint): experts and contributors must match its latent and text."""
    from hddm_core.contrib.compatibility import clustering_version_from_sha

    cluster_manifest = require_manifest(store, cluster_prefix, "cluster")
    centroids = cluster_manifest.outputs.get("centroids.safetensors", {}).get("sha256")
    return {"latent": latent, "text": text, "n_clusters": int(cluster_manifest.config["n_clusters"]),
            # the run's clustering identity (hddm_core.contrib.compatibility): experts declare it
            "clustering_version": clustering_version_from_sha(centroids) if centroids else None,
            "caption_source": "recaption" if captions_prefix else "original",
            "batch_size": config.batch_size, "shard_size": config.shard_size,
            # recorded only when a split is set aside, so runs without one keep their fingerprint
            **({"holdout": config.holdout().describe()} if config.holdout_per_cluster else {})}


def stage_counts(seen: int, stats: dict, streams: dict[str, int], n_clusters: int) -> dict:
    counts = {"samples": seen, **stats, "router": streams.get(ROUTER_STREAM, 0),
              "clusters": {str(c): streams.get(cluster_stream(c), 0) for c in range(n_clusters)}}
    if any(s.startswith(HOLDOUT_PREFIX) for s in streams):
        counts["holdout"] = {str(c): streams.get(holdout_stream(c), 0) for c in range(n_clusters)}
        counts["holdout_total"] = sum(counts["holdout"].values())
    return counts


def null_text_bytes(text_encoder) -> bytes:
    """The null caption's tokens and mask (classifier-free guidance), encoded once per stage."""
    from safetensors.numpy import save

    null_tokens, null_mask = text_encoder.encode([NULL_CAPTION])
    return save({"text_tokens": np.ascontiguousarray(null_tokens[0].numpy(), dtype=np.float16),
                 "text_mask": np.ascontiguousarray(null_mask[0].numpy(), dtype=np.uint8)},
                metadata={"caption": NULL_CAPTION})


def flush_rows(stream: str, rows: list) -> dict[str, bytes]:
    """One shard's file from its (key, record) rows, in order; a record is (mean, std, label) for the
    router stream, (mean, std, tokens [L_i, D] f16, caption) for a cluster stream."""
    from safetensors.numpy import save

    keys = [k for k, _ in rows]
    tensors = {"latents": _check_f16("latents", np.stack([r[0] for _, r in rows]))}
    if rows[0][1][1] is not None:
        tensors["latent_std"] = _check_f16("latent_std", np.stack([r[1] for _, r in rows]))
    meta = {"keys": json.dumps(keys)}
    if stream == ROUTER_STREAM:
        tensors["labels"] = np.asarray([r[2] for _, r in rows], np.int64)
    else:
        tensors["text_tokens"], tensors["text_mask"] = _pad_tokens([r[2] for _, r in rows])
        meta["captions"] = json.dumps([r[3] for _, r in rows])
    return {".safetensors": canonical_safetensors(save(tensors, metadata=meta))}
