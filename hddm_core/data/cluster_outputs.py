"""What a cluster stage writes, whichever way it fitted: assignments, centroids, sizes, picture, report,
then the manifest last (hddm_core.data.cluster fits on every embedding, cluster_scale on a sample)."""
from __future__ import annotations

import io
import logging

import numpy as np

log = logging.getLogger(__name__)


def _scan_samples(samples, labels_by_key: dict[str, int], config):
    """One pass over the samples: group labels by key and the first thumbnails of each cluster."""
    groups, thumbs = {}, {}
    for s in samples:
        if s.key not in labels_by_key:
            continue
        if config.group_field in (s.meta or {}):
            groups[s.key] = str(s.meta[config.group_field])
        c = labels_by_key[s.key]
        bucket = thumbs.setdefault(c, [])
        if len(bucket) < config.thumbnails_per_cluster:
            im = s.image.convert("RGB").copy()
            im.thumbnail((config.thumbnail_size, config.thumbnail_size))
            bucket.append(im)
    return groups, thumbs


def write_cluster_outputs(store, out_prefix: str, config, cfg: dict, inputs: dict, embed_manifest, keys: list[str],
                          labels_by_level: list[np.ndarray], result, dim: int, samples=None, extra_counts=None):
    """labels_by_level: [N] labels of every key per level, the top level last; result: the fitted
    HierarchicalClusters (its centroids and parents are published)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hddm_core.data import cluster_report
    from hddm_core.data.cluster import ASSIGNMENTS, CENTROIDS, PICTURE, REPORT_JSON, REPORT_MD, SIZES, STAGE, save_centroids
    from hddm_core.manifests import StageManifest, describe_outputs, hash_config, write_manifest

    labels = np.asarray(labels_by_level[-1])
    labels_by_key = dict(zip(keys, labels.tolist()))
    sizes = np.bincount(labels, minlength=config.n_clusters).astype(int).tolist()
    columns = {"key": keys, "cluster": labels.astype(np.int32)}
    for level, lab in enumerate(labels_by_level[:-1]):
        columns[f"level_{level}"] = np.asarray(lab).astype(np.int32)
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    store.write_bytes(f"{out_prefix}/{ASSIGNMENTS}", buf.getvalue())
    store.write_bytes(f"{out_prefix}/{CENTROIDS}", save_centroids(result))
    store.write_json(f"{out_prefix}/{SIZES}", {"sizes": sizes, "level_sizes": result.level_sizes})

    groups, thumbs = _scan_samples(samples, labels_by_key, config) if samples is not None else ({}, {})
    report = {"stage_prefix": out_prefix, "embedder": embed_manifest.config["embedder"]["model"],
              "n_samples": len(keys), "dim": int(dim), "level_sizes": result.level_sizes,
              "seed": config.seed, "balance": config.balance, "sizes": sizes, "group_field": config.group_field,
              "agreement": None, "composition": None, "groups_known_for": len(groups)}
    if groups:
        scored = [k for k in keys if k in groups]
        lab = [labels_by_key[k] for k in scored]
        grp = [groups[k] for k in scored]
        report["agreement"] = cluster_report.agreement(lab, grp, seed=config.seed)
        report["composition"] = {str(c): v for c, v in cluster_report.cluster_composition(lab, grp).items()}
    store.write_bytes(f"{out_prefix}/{PICTURE}", cluster_report.cluster_picture(
        thumbs, sizes, title=f"{config.n_clusters} clusters of {report['embedder']} embeddings"))
    store.write_json(f"{out_prefix}/{REPORT_JSON}", report)
    store.write_bytes(f"{out_prefix}/{REPORT_MD}", cluster_report.report_markdown(report).encode())
    log.info("cluster report:\n%s", cluster_report.report_markdown(report))

    outputs = [ASSIGNMENTS, CENTROIDS, SIZES, PICTURE, REPORT_JSON, REPORT_MD]
    counts = {"samples": len(keys), "sizes": sizes, "level_sizes": result.level_sizes,
              "agreement": report["agreement"], **(extra_counts or {})}
    manifest = StageManifest(stage=STAGE, config=cfg, config_hash=hash_config(cfg), inputs=inputs,
                             outputs=describe_outputs(store, out_prefix, outputs), counts=counts)
    write_manifest(store, out_prefix, manifest)
    return manifest
