"""What evaluation measures against: the held-out split, cached reference statistics, FID.

Prompts and reference images come from the prepare stage's held-out split (hddm_core.data.holdout)
of the experts' clusters when it has one (the paper's protocol: prompts are held-out captions, FID
references are held-out images); a run without one falls back to its training data, and the report
says so. Reference statistics are 2048-d Inception statistics (float64), computed once and stored
as `<evaluations_prefix>/references/<hash>.npz`, keyed by the prepare manifest's content hash, the
feature network, the resize, the source, the clusters and the image count; later evaluations load
them. The projected distance uses their exact projection (hddm_core.metrics.fid.project_stats).
FID (`fid_samples`) is computed on that many samples per routing mode, in chunks (sample, decode,
features), against the statistics of every held-out image of the clusters, which must number at
least `fid_samples`; the check runs before any sampling.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from hddm_core.data.holdout import holdout_stream
from hddm_core.manifests import hash_config
from hddm_core.metrics.fid import FEATURE_NET, RESIZE, FeatureStats, feature_statistics, fid
from hddm_core.storage import ArtifactStore

log = logging.getLogger(__name__)
HELD_OUT, TRAINING = "held-out", "training"
LABEL = f"{FEATURE_NET}; {RESIZE}"  # the 2048-d statistics' feature label (= inception_stats')


@dataclass
class EvalData:
    captions: list[str]
    tokens: torch.Tensor  # [n, L, D]
    mask: torch.Tensor  # [n, L]
    real: torch.Tensor  # [M, C, H, W] latents of the reference images
    source: str  # HELD_OUT or TRAINING
    clusters: list[int]
    note: str


def held_out_counts(prep, clusters: list[int]) -> dict[int, int]:
    counts = prep.counts.get("holdout", {})
    return {c: int(counts.get(str(c), 0)) for c in clusters}


def datasets(store: ArtifactStore, prefix: str, clusters: list[int], source: str) -> dict:
    from hddm_core.data.cluster_data import ClusterDataset

    return {c: ClusterDataset(store, prefix, c, stream=holdout_stream(c) if source == HELD_OUT else None)
            for c in clusters}


def prompts_from(store: ArtifactStore, prefix: str, sets: dict, n: int, n_real: int):
    """(captions, tokens [n, L, D], mask [n, L], real [M, C, H, W]): prompts round-robin over the sets,
    the reference spread evenly over them."""
    from hddm_core.data.cluster_data import shard_metadata

    clusters = list(sets)
    captions, tokens, masks, real, meta = [], [], [], [], {}
    for i in range(n):
        c = clusters[i % len(clusters)]
        ds = sets[c]
        j = (i // len(clusters)) % len(ds)
        _, tok, mask = ds[j]
        shard = int(np.searchsorted(ds.starts, j, side="right") - 1)
        if (c, shard) not in meta:
            meta[(c, shard)] = shard_metadata(store, prefix, ds.files[shard])
        captions.append(meta[(c, shard)]["captions"][j - int(ds.starts[shard])])
        tokens.append(tok)
        masks.append(mask)
    per = -(-n_real // len(clusters))  # ceil
    for ds in sets.values():
        real += [ds[j][0] for j in range(min(len(ds), per))]
    return captions, torch.stack(tokens), torch.stack(masks), torch.stack(real) if real else None


def eval_data(store: ArtifactStore, params, prep, clusters: list[int]) -> EvalData:
    """Prompts and reference images from the held-out split when the run has one, else training data."""
    held = held_out_counts(prep, clusters)
    if sum(held.values()):
        use, source = [c for c in clusters if held[c]], HELD_OUT
    else:
        use, source = list(clusters), TRAINING
    sets = datasets(store, params.prepare_prefix, use, source)
    captions, tokens, mask, real = prompts_from(store, params.prepare_prefix, sets, params.n_prompts,
                                                params.reference_images)
    if source == HELD_OUT:
        rule = prep.config.get("holdout", {})
        note = (f"Prompts ({len(set(captions))} distinct) and the {len(real)} reference images come from the "
                f"held-out split (never trained on; {sum(held.values())} images in clusters {use}, seed "
                f"{rule.get('seed')}).")
    else:
        note = (f"No held-out split in this run's prepare stage (prepare holdout_per_cluster=0): prompts and the "
                f"{len(real)} reference images come from the TRAINING data, so the distance rewards memorisation.")
    return EvalData(captions, tokens, mask, real, source, use, note)


def reference_key(params, prep, source: str, clusters: list[int], count: int) -> str:
    key = hash_config({"prepare": prep.content_hash, "feature_net": FEATURE_NET, "resize": RESIZE, "source": source,
                       "clusters": sorted(clusters), "count": int(count)})
    return f"{params.evaluations_prefix}/references/{key[:16]}.npz"


def images_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [N, 3, H, W] for Inception


def stored_stats(store: ArtifactStore, key: str, compute) -> FeatureStats:
    """Statistics stored under key, else compute() once and store them (npz, never unpickled)."""
    if store.exists(key):
        stats = FeatureStats.from_npz_bytes(store.read_bytes(key))
        log.info("reference statistics reused from %s (n=%d)", store.uri(key), stats.n)
        return stats
    stats = compute()
    store.write_bytes(key, stats.to_npz_bytes())
    log.info("reference statistics written to %s (n=%d)", store.uri(key), stats.n)
    return stats


def latent_features(latents, decoder, features, batch_size: int) -> np.ndarray:
    """2048-d features of latents [N, ...] decoded to pixels, in chunks (memory stays at one chunk)."""
    chunk = max(1, int(batch_size)) * 8
    out = [features(images_uint8(decoder.decode(latents[i:i + chunk], batch_size)))
           for i in range(0, len(latents), chunk)]
    return np.concatenate(out, 0)


def reference_stats(store: ArtifactStore, params, prep, data: EvalData, decoder, features) -> FeatureStats:
    """2048-d statistics of the evaluation's reference images, stored once per inputs."""
    key = reference_key(params, prep, data.source, data.clusters, len(data.real))
    return stored_stats(store, key, lambda: feature_statistics(
        latent_features(data.real, decoder, features, params.batch_size), LABEL))


class FidCheck:
    """FID on `fid_samples` samples per routing mode against every held-out image of the clusters."""

    def __init__(self, store: ArtifactStore, params, prep, data: EvalData):
        self.store, self.params, self.prep, self.n = store, params, prep, int(params.fid_samples)
        self.clusters = data.clusters
        available = sum(held_out_counts(prep, data.clusters).values()) if data.source == HELD_OUT else 0
        if available < self.n:  # refused before any sampling
            raise ValueError(f"fid_samples={self.n} needs at least {self.n} held-out reference images in clusters "
                             f"{data.clusters}; the prepare stage under {params.prepare_prefix} holds out {available} "
                             "(raise prepare holdout_per_cluster / holdout_max_fraction)")
        self.available = available
        self._ref: FeatureStats | None = None

    def reference(self, decoder, features) -> FeatureStats:
        if self._ref is None:
            sets = datasets(self.store, self.params.prepare_prefix, self.clusters, HELD_OUT)

            def compute():
                latents = torch.stack([ds[j][0] for ds in sets.values() for j in range(len(ds))])
                return feature_statistics(latent_features(latents, decoder, features, self.params.batch_size), LABEL)

            key = reference_key(self.params, self.prep, f"{HELD_OUT} (all)", self.clusters, self.available)
            self._ref = stored_stats(self.store, key, compute)
        return self._ref

    def note(self) -> str:
        return (f"FID: {self.n} samples per routing mode (prompts cycling over the held-out captions) against "
                f"2048-d statistics of all {self.available} held-out images; Inception-v3 pool features, clean "
                "resize, float64 statistics.")

    def measure(self, name: str, routing, members, sampler: dict, decoder, features, device: str, shape):
        from hddm_core.pipeline.batched_sampling import sample_in_batches

        sets = datasets(self.store, self.params.prepare_prefix, self.clusters, HELD_OUT)
        _, tokens, mask, _ = prompts_from(self.store, self.params.prepare_prefix, sets, self.n, 0)
        chunk, feats = self.params.batch_size * 8, []
        for lo in range(0, self.n, chunk):
            hi = min(self.n, lo + chunk)
            res = sample_in_batches(members, list(range(self.params.seed + lo, self.params.seed + hi)), shape,
                                    cond={"tokens": tokens[lo:hi], "mask": mask[lo:hi]},
                                    batch_size=self.params.batch_size, device=device, desc=f"FID {name}",
                                    routing=routing, **sampler)
            feats.append(latent_features(res.samples, decoder, features, self.params.batch_size))
        return fid(feature_statistics(np.concatenate(feats, 0), LABEL), self.reference(decoder, features))
