"""The cluster stage at LAION scale: centroids fitted on a bounded, seeded sample (cluster_sample),
every embedding assigned by the map over embedding shards (cluster_map); memory in any one process
is the sample (at most `max_sample_bytes` of float32 rows) or one shard, never all embeddings.

Same outputs as hddm_core.data.cluster.cluster_stage (assignments with every level's labels,
centroids and parents, sizes, picture, report; manifest last). The config adds a "fit" entry (the
memory bound, resampling); the manifest's counts state the sample drawn ("fit": rows, bytes, bound,
the embeddings' total, the faiss device).
"""
from __future__ import annotations

import logging

from hddm_core.data.cluster import CENTROIDS, ClusterConfig, save_centroids
from hddm_core.data.cluster_sample import SampleFit, faiss_gpu, fit_on_sample, read_sample
from hddm_core.storage import ArtifactStore

log = logging.getLogger(__name__)


def cluster_stage_sampled(store: ArtifactStore, out_prefix: str, embed_prefix: str, config: ClusterConfig | None = None,
                          fit: SampleFit | None = None, *, samples=None, executor=None, force: bool = False):
    """Fit on a sample of at most fit.max_sample_bytes, assign everything as a map; returns the manifest."""
    from hddm_core.data.cluster_map import assign_map
    from hddm_core.data.cluster_outputs import write_cluster_outputs
    from hddm_core.data.sharded_stage import require_manifest
    from hddm_core.manifests import completed, read_manifest

    config = (config or ClusterConfig()).validate()
    fit = (fit or SampleFit()).validate()
    if config.balance:
        raise ValueError("balance=True is the whole-matrix fit's capacity assignment; the sampled fit balances "
                         "by Vo et al.'s resampling (resample_steps): use balance=False")
    embed_manifest = require_manifest(store, embed_prefix, "embed")
    inputs = {"embeddings": embed_manifest.content_hash}
    cfg = {**vars(config), "fit": {"max_sample_bytes": int(fit.max_sample_bytes),
                                   "resample_steps": int(fit.resample_steps), "resample_size": fit.resample_size}}
    if not force and (done := completed(store, out_prefix, cfg, inputs)) is not None:
        log.info("cluster: %s already complete, skipped", store.uri(out_prefix))
        return done
    if read_manifest(store, out_prefix) is not None:
        store.delete(f"{out_prefix}/_manifest.json")

    dim = int(embed_manifest.counts["dim"])
    sample_keys, x, total = read_sample(store, embed_prefix, dim, fit.max_sample_bytes, config.seed, executor)
    gpu = faiss_gpu()
    result = fit_on_sample(x, config.n_clusters, config.level_sizes, seed=config.seed, n_iter=config.n_iter,
                           n_redo=config.n_redo, normalize=config.normalize, resample_steps=fit.resample_steps,
                           resample_size=fit.resample_size, gpu=gpu)
    store.write_bytes(f"{out_prefix}/{CENTROIDS}", save_centroids(result))  # what the assignment tasks read
    keys, labels_by_level = assign_map(store, embed_prefix, f"{out_prefix}/{CENTROIDS}", executor, levels=True)
    if len(keys) != total:
        raise RuntimeError(f"cluster: assigned {len(keys)} embeddings, the embed shards hold {total}")
    counts = {"fit": {"sample_rows": len(sample_keys), "sample_bytes": int(x.nbytes),
                      "max_sample_bytes": int(fit.max_sample_bytes), "embeddings": total,
                      "device": "faiss-gpu" if gpu else "faiss-cpu"}}
    manifest = write_cluster_outputs(store, out_prefix, config, cfg, inputs, embed_manifest, keys, labels_by_level,
                                     result, dim, samples, counts)
    log.info("cluster: fitted on %d of %d embeddings (%d bytes, bound %d) with %s", len(sample_keys), total,
             x.nbytes, fit.max_sample_bytes, counts["fit"]["device"])
    return manifest
