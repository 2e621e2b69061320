"""A published run as the contributor sees it: fetch its clustering and settings into a card, read the card back."""
from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from dataclasses import dataclass

from hddm_core import __version__
from hddm_core.contrib.compatibility import RunExpectations, clustering_version_from_sha
from hddm_core.storage import ArtifactStore, redact_url, validate_key

log = logging.getLogger(__name__)

CARD_NAME = "clustering.json"
CARD_FORMAT = "hddm-published-clustering"
CARD_VERSION = 1
CENTROIDS_NAME = "centroids.safetensors"


@dataclass(frozen=True)
class RunLayout:
    """Stage prefixes of a published run (hddm_core.pipeline.params defaults)."""

    embed: str = "embed"
    cluster: str = "cluster"
    prepare: str = "prepare"
    experts: str = "experts/registry"

    def __post_init__(self):
        for name in ("embed", "cluster", "prepare", "experts"):
            validate_key(getattr(self, name))


def _preprocessing(embedder: dict, latent: dict) -> dict:
    if embedder.get("backend") == "inception":
        embed = (f"RGB, bilinear resize to {embedder.get('input_size', 299)}x{embedder.get('input_size', 299)}, "
                 "uint8/128 - 1 (Inception-v3 FID network)")
    elif embedder.get("backend") == "dinov2":
        embed = f"RGB, the image processor of {embedder.get('model')} (transformers AutoImageProcessor)"
    else:
        embed = f"as the embedder {embedder.get('model')!r} defines"
    res = latent.get("resolution")
    return {"embedding": embed + "; embeddings L2-normalised before assignment",
            "latent": f"RGB, centre square crop, bicubic resize to {res}x{res}, scaled to [-1, 1]"
                      + ("" if latent.get("space") == "pixel" else f", then {latent.get('model')} x {latent.get('scale')}")}


def fetch_clustering(run_url: str, out_dir: str, *, layout: RunLayout | None = None,
                     storage_options: dict | None = None) -> dict:
    """Copy a published run's clustering and settings into out_dir (centroids.safetensors, then
    clustering.json last). Reads only finished stages (their manifests); returns the card."""
    from hddm_core.data.cluster import load_centroids
    from hddm_core.data.sharded_stage import require_manifest

    layout = layout or RunLayout()
    run = ArtifactStore(run_url, storage_options)
    cluster = require_manifest(run, layout.cluster, "cluster")
    embed = require_manifest(run, layout.embed, "embed")
    prepare = require_manifest(run, layout.prepare, "prepare")
    if CENTROIDS_NAME not in cluster.outputs:
        raise ValueError(f"{run.uri(layout.cluster)}: the cluster manifest names no {CENTROIDS_NAME}")
    raw = run.read_bytes(f"{layout.cluster}/{CENTROIDS_NAME}")
    sha = hashlib.sha256(raw).hexdigest()
    if sha != cluster.outputs[CENTROIDS_NAME]["sha256"]:
        raise ValueError(f"{run.uri(layout.cluster + '/' + CENTROIDS_NAME)}: sha256 {sha[:16]}... differs from its "
                         f"manifest's {cluster.outputs[CENTROIDS_NAME]['sha256'][:16]}...; refusing a changed file")
    out = ArtifactStore(out_dir)
    out.write_bytes(CENTROIDS_NAME, raw)
    with out.local_path(CENTROIDS_NAME) as path:
        centroids, _parents, normalize = load_centroids(path)
    latent, text = prepare.config["latent"], prepare.config["text"]
    card = {
        "format": CARD_FORMAT, "format_version": CARD_VERSION, "run": redact_url(run.root),
        "layout": {"embed": layout.embed, "cluster": layout.cluster, "prepare": layout.prepare,
                   "experts": layout.experts},
        "clustering_version": clustering_version_from_sha(sha), "centroids_sha256": sha,
        "n_clusters": int(cluster.config["n_clusters"]), "level_sizes": [int(len(c)) for c in centroids],
        "embedding_dim": int(centroids[0].shape[1]), "normalize": bool(normalize),
        "assignment_rule": "nearest level-0 centroid of the normalised embedding, then the parents of each level above",
        "cluster_sizes": cluster.counts.get("sizes"), "embedder": embed.config["embedder"],
        "preprocessing": _preprocessing(embed.config["embedder"], latent), "latent": latent, "text": text,
        "caption_source": prepare.config.get("caption_source"), "run_data_hash": prepare.content_hash,
        "fetched_at": _dt.datetime.now(_dt.timezone.utc).isoformat(), "code_version": __version__,
    }
    out.write_json(CARD_NAME, card)
    log.info("fetched clustering %s (%d clusters) from %s", card["clustering_version"], card["n_clusters"], card["run"])
    return card


def read_card(clustering_dir: str) -> dict:
    """The card fetch_clustering wrote, checked against its centroids' sha256."""
    store = ArtifactStore(clustering_dir)
    if not store.exists(CARD_NAME):
        raise FileNotFoundError(f"no {CARD_NAME} in {clustering_dir}: run `hddmp contrib fetch --run URL --out "
                                f"{clustering_dir}` first")
    card = store.read_json(CARD_NAME)
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT or card.get("format_version") != CARD_VERSION:
        raise ValueError(f"{store.uri(CARD_NAME)} is not a {CARD_FORMAT} v{CARD_VERSION} card")
    raw = store.read_bytes(CENTROIDS_NAME)
    if hashlib.sha256(raw).hexdigest() != card["centroids_sha256"]:
        raise ValueError(f"{store.uri(CENTROIDS_NAME)} does not match the card's centroids_sha256; fetch again")
    return card


def expectations(clustering_dir: str) -> RunExpectations:
    """What every expert of the fetched run must declare."""
    return RunExpectations.from_card(read_card(clustering_dir))
