"""The contributor's work folder: its stage prefixes and contribution.json (where the images came from, the trained expert)."""
from __future__ import annotations

import os

from hddm_core.storage import ArtifactStore

CONTRIBUTION_NAME = "contribution.json"
EMBED_PREFIX, CLUSTER_PREFIX, PREPARE_PREFIX = "embed", "cluster", "prepare"


def read_contribution(work_dir: str) -> dict:
    work = ArtifactStore(work_dir)
    if not work.exists(CONTRIBUTION_NAME):
        raise FileNotFoundError(f"no {CONTRIBUTION_NAME} in {work_dir}: run `hddmp contrib assign` first")
    return work.read_json(CONTRIBUTION_NAME)


def is_contribution(work_dir: str | None) -> bool:
    if not work_dir or ("://" not in work_dir and not os.path.isdir(work_dir)):
        return False  # asking must not create the folder (a refused command writes nothing)
    return ArtifactStore(work_dir).exists(CONTRIBUTION_NAME)


def record_trained_expert(work_dir: str, expert_uri: str, cluster_id: int, objective: str) -> None:
    """Remember the expert trained in this work folder (submit and validate default to it)."""
    work = ArtifactStore(work_dir)
    info = read_contribution(work_dir)
    if "://" not in expert_uri:  # a local path relative to this process's folder: keep it usable from anywhere
        expert_uri = os.path.abspath(expert_uri)
    info["expert"] = {"uri": expert_uri, "cluster_id": int(cluster_id), "objective": objective}
    work.write_json(CONTRIBUTION_NAME, info)


def trained_expert(work_dir: str) -> tuple[str, str]:
    """(expert URI, clustering folder) recorded in a work folder by `hddmp expert train`."""
    info = read_contribution(work_dir)
    if "expert" not in info:
        raise FileNotFoundError(f"no trained expert recorded in {work_dir}: run `hddmp expert train --artifact-root "
                                f"{work_dir} ...` first, or pass the expert folder")
    return info["expert"]["uri"], info["clustering_dir"]
