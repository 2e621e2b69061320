"""Ensembles from self-describing checkpoints (hddm_core.checkpoints): experts, router, compatibility.

Experts are read lazily: the manifest (JSON) is read up front so the ensemble can be checked and
ordered, and the weights are validated (hash, shapes, finiteness; never unpickled) and loaded by
hddm_core.checkpoints.load_expert the first time the sampler selects the expert.

Compatibility: every expert (and the router) must share latent_space and latent_scale, and every
expert must share text_encoder and text_dim; otherwise a ValueError names the field and each
checkpoint's value. Router column i is cluster router.cluster_ids[i]; the expert for that column is
the one whose manifest cluster_id matches, so ensemble order always follows the router.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch

from hddm_core.checkpoints import ExpertManifest, RouterManifest, load_expert, load_router
from hddm_core.storage import ArtifactStore
from hddm_core.inference.pool import EnsembleExpertHandle

log = logging.getLogger(__name__)


def _read_manifest(location: str, name: str) -> tuple[dict, str]:
    location = os.fspath(location)
    folder = location[: -len(name) - 1] if location.endswith("/" + name) else location.rstrip("/")
    store = ArtifactStore(folder)
    if not store.exists(name):
        raise FileNotFoundError(f"no {name} in {store.root}")
    return store.read_json(name), store.root


def latent_id(manifest: dict) -> str:
    return f"{manifest.get('latent_space')} (scale {manifest.get('latent_scale')})"


def text_id(manifest: dict) -> str:
    return f"{manifest.get('text_encoder')} (width {manifest.get('text_dim')})"


def expert_member(location: str, *, name: str | None = None, device: str | torch.device = "cpu") -> EnsembleExpertHandle:
    """An ensemble member for an expert checkpoint folder (or its expert.json), loaded on first use."""
    raw, root = _read_manifest(location, "expert.json")
    fields = ExpertManifest.__dataclass_fields__
    unknown = sorted(set(raw) - set(fields))
    if unknown or raw.get("format") != "hddm-expert":
        raise ValueError(f"{root}/expert.json is not an hddm-expert manifest (format {raw.get('format')!r}, "
                         f"unknown fields {unknown})")
    manifest = ExpertManifest(**raw)

    def loader():
        loaded = load_expert(root, device=device)  # full validation happens here
        if loaded.manifest.weights_sha256 != manifest.weights_sha256:
            raise ValueError(f"{root}: checkpoint changed since the ensemble was assembled "
                             f"(sha256 {manifest.weights_sha256[:12]} -> {loaded.manifest.weights_sha256[:12]})")
        return loaded.model

    if name is None:
        cluster = manifest.cluster_id
        name = f"cluster{cluster}-{manifest.objective}" if cluster is not None else os.path.basename(root.rstrip("/"))
    return EnsembleExpertHandle(name=name, declaration=manifest.declaration, loader=loader, latent_space=latent_id(raw),
                          text_encoder=text_id(raw), manifest=raw)


@dataclass
class LoadedEnsemble:
    members: list[EnsembleExpertHandle]
    router: torch.nn.Module | None
    router_time_input: str
    router_manifest: RouterManifest | None


def load_ensemble(expert_locations: Sequence[str], router_location: str | None = None, *,
                  device: str | torch.device = "cpu") -> LoadedEnsemble:
    """Experts (lazy) and router (loaded now) ready for sample_ensemble(members, router=..., router_time_input=...)."""
    members = [expert_member(loc, device=device) for loc in expert_locations]
    if router_location is None:
        return LoadedEnsemble(members, None, "continuous", None)
    loaded = load_router(router_location, device=device)
    rm = loaded.manifest
    if rm.schedule != "linear":
        raise ValueError(f"router {loaded.uri} sees x_t on schedule {rm.schedule!r}; the ensemble sampler runs on "
                         "'linear' (retrain the router on the sampler's path)")
    router_latent = latent_id(rm.to_dict())
    for m in members:
        if m.latent_space != router_latent:
            raise ValueError(f"incompatible router: field 'latent_space' is {router_latent!r} for the router but "
                             f"{m.latent_space!r} for expert {m.name!r}")
    by_cluster: dict[int, EnsembleExpertHandle] = {}
    for m in members:
        c = m.manifest.get("cluster_id")
        if c is None:
            raise ValueError(f"expert {m.name!r} has no cluster_id, so it cannot be matched to a router column")
        if c in by_cluster:
            raise ValueError(f"experts {by_cluster[c].name!r} and {m.name!r} both declare cluster_id {c}")
        by_cluster[c] = m
    missing = [c for c in rm.cluster_ids if c not in by_cluster]
    extra = sorted(set(by_cluster) - set(rm.cluster_ids))
    if missing or extra:
        raise ValueError(f"router clusters {rm.cluster_ids} do not match the experts' clusters {sorted(by_cluster)} "
                         f"(no expert for {missing}; no router column for {extra})")
    ordered = [by_cluster[c] for c in rm.cluster_ids]
    return LoadedEnsemble(ordered, loaded.model, rm.time_input, rm)
