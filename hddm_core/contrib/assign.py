"""Assigning the contributor's images to a published run's clusters: the run's embedder, then its centroids.

Writes, in the work folder (an ArtifactStore, any URL): embed/ (the images embedded with the run's
embedder), cluster/ (a cluster stage named like the pipeline's, so the prepare stage reads it
unchanged: assignments, the same centroids, sizes, a picture) and contribution.json.
"""
from __future__ import annotations

import io
import os
from typing import Iterable

import numpy as np

from hddm_core.contrib.published_run import CENTROIDS_NAME, read_card
from hddm_core.contrib.sources import check_source, open_source
from hddm_core.contrib.work_folder import CLUSTER_PREFIX, CONTRIBUTION_NAME, EMBED_PREFIX
from hddm_core.manifests import MANIFEST_NAME, StageManifest, completed, describe_outputs, hash_config, write_manifest
from hddm_core.storage import ArtifactStore


def _thumbnails(samples: Iterable, labels: dict[str, int], per_cluster: int = 8, size: int = 48) -> dict[int, list]:
    thumbs: dict[int, list] = {}
    for s in samples:
        c = labels.get(s.key)
        if c is None or len(thumbs.setdefault(c, [])) >= per_cluster:
            continue
        im = s.image.convert("RGB").copy()
        im.thumbnail((size, size))
        thumbs[c].append(im)
    return thumbs


def assign_contribution(clustering_dir: str, source: dict, work_dir: str, *, device: str | None = None,
                        embedder_path: str | None = None, batch_size: int = 32, force: bool = False) -> dict:
    """Embed the contributor's images with the run's embedder and assign them with the run's
    centroids; writes work/embed, work/cluster (a cluster stage: assignments, the same centroids,
    sizes, a picture) and work/contribution.json. Returns {sizes, largest, n_samples, ...}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hddm_core.data import cluster_report
    from hddm_core.data.cluster import ASSIGNMENTS, PICTURE, SIZES, assign_to_clusters, load_centroids
    from hddm_core.data.embed import EmbedConfig, embed, read_embeddings
    from hddm_core.data.factories import build_embedder

    card = read_card(clustering_dir)
    source = check_source(source)
    samples, source_hash, total = open_source(source)
    work = ArtifactStore(work_dir)
    embedder = build_embedder(card["embedder"], device=device, model_path=embedder_path, check_recorded=True)
    embed_manifest = embed(work, EMBED_PREFIX, embedder, samples=samples(), input_hash=source_hash,
                           config=EmbedConfig(batch_size=batch_size), force=force, total=total)
    inputs = {"embeddings": embed_manifest.content_hash, "centroids": card["centroids_sha256"]}
    config = {"n_clusters": card["n_clusters"], "assigned_from": card["run"],
              "clustering_version": card["clustering_version"], "rule": card["assignment_rule"]}
    done = None if force else completed(work, CLUSTER_PREFIX, config, inputs)
    if done is None:
        if work.exists(f"{CLUSTER_PREFIX}/{MANIFEST_NAME}"):
            work.delete(f"{CLUSTER_PREFIX}/{MANIFEST_NAME}")
        keys, x = read_embeddings(work, EMBED_PREFIX)
        with ArtifactStore(clustering_dir).local_path(CENTROIDS_NAME) as path:
            centroids, parents, normalize = load_centroids(path)
        labels = assign_to_clusters(x, centroids, parents, normalize)  # [N] top-level cluster
        sizes = np.bincount(labels, minlength=card["n_clusters"]).astype(int).tolist()
        buf = io.BytesIO()
        pq.write_table(pa.table({"key": keys, "cluster": labels.astype(np.int32)}), buf)
        work.write_bytes(f"{CLUSTER_PREFIX}/{ASSIGNMENTS}", buf.getvalue())
        work.write_bytes(f"{CLUSTER_PREFIX}/{CENTROIDS_NAME}", ArtifactStore(clustering_dir).read_bytes(CENTROIDS_NAME))
        work.write_json(f"{CLUSTER_PREFIX}/{SIZES}", {"sizes": sizes, "level_sizes": card["level_sizes"]})
        thumbs = _thumbnails(samples(), dict(zip(keys, labels.tolist())))
        work.write_bytes(f"{CLUSTER_PREFIX}/{PICTURE}", cluster_report.cluster_picture(
            thumbs, sizes, title=f"your images under the run's {card['n_clusters']} clusters"))
        outputs = [ASSIGNMENTS, CENTROIDS_NAME, SIZES, PICTURE]
        done = StageManifest(stage="cluster", config=config, config_hash=hash_config(config), inputs=inputs,
                             outputs=describe_outputs(work, CLUSTER_PREFIX, outputs),
                             counts={"samples": len(keys), "sizes": sizes})
        write_manifest(work, CLUSTER_PREFIX, done)
    sizes = list(done.counts["sizes"])
    summary = {"clustering_dir": os.path.abspath(clustering_dir) if "://" not in clustering_dir else clustering_dir,
               "source": source, "source_hash": source_hash, "clustering_version": card["clustering_version"],
               "n_samples": int(done.counts["samples"]), "sizes": sizes, "largest": int(np.argmax(sizes)),
               "picture": work.uri(f"{CLUSTER_PREFIX}/{PICTURE}")}
    work.write_json(CONTRIBUTION_NAME, summary)
    return summary
