"""Registering a contributed expert: validate the untrusted checkpoint, then store it under the
experts prefix. Only safetensors + the JSON manifest are read (never unpickled); every check of
hddm_core.checkpoints (schema, shapes, sha256, finite values) must pass, then a smoke forward pass of the
loaded network on random inputs must return finite values of the input's shape. The stored copy is
weights first, manifest last, so readers see the new pair whole or not at all.
"""
from __future__ import annotations

import logging
import posixpath

import torch

from hddm_core.checkpoints import load_expert, validate_expert
from hddm_core.pipeline.params import check_key_name, check_prefix
from hddm_core.storage import ArtifactStore
from hddm_core.diffusion.time_inputs import network_time

log = logging.getLogger(__name__)
MANIFEST = "expert.json"


def smoke_forward(model: torch.nn.Module, manifest, batch: int = 2, text_len: int = 4) -> str:
    """One forward pass on seeded random inputs; raises ValueError unless the output is finite and shaped."""
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen)  # [B, C, H, W]
    t = network_time(torch.tensor([0.25, 0.75][:batch] + [0.5] * max(0, batch - 2), dtype=torch.float64),
                     manifest.time_input).float()
    tokens = torch.randn(batch, text_len, int(manifest.text_dim), generator=gen)  # [B, L, D_text]
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    with torch.no_grad():
        out = model(x, t, {"tokens": tokens, "mask": mask})
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"smoke forward: output shape {tuple(out.shape)} != input shape {tuple(x.shape)}")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("smoke forward: the network returned NaN or Inf on random inputs")
    return f"output {list(out.shape)} finite"


def register_expert(store: ArtifactStore, source: str, experts_prefix: str, name: str) -> dict:
    """Validate `source` (folder or URL with expert.json) and copy it to store/experts_prefix/name."""
    check_prefix(experts_prefix, "experts_prefix")
    check_key_name(name, "expert name")
    checks = validate_expert(source)  # PickleRefused / FileNotFoundError propagate
    failed = [c for c in checks if not c.ok]
    if failed:
        raise ValueError(f"expert {source!r} rejected: " + "; ".join(map(str, failed)))
    loaded = load_expert(source)
    manifest = loaded.manifest
    check_key_name(manifest.weights_file, "weights_file")
    smoke = smoke_forward(loaded.model, manifest)
    summary = [str(c) for c in checks] + [f"[OK] smoke-forward: {smoke}"]

    prefix = f"{experts_prefix}/{name}"
    dest = store.child(prefix)
    src = ArtifactStore(loaded.uri)
    result = {"uri": dest.root, "prefix": prefix, "weights_sha256": manifest.weights_sha256, "checks": summary,
              "cluster_id": manifest.cluster_id, "objective": manifest.objective, "already_registered": False}
    if dest.exists(MANIFEST) and dest.read_json(MANIFEST).get("weights_sha256") == manifest.weights_sha256 \
            and dest.exists(manifest.weights_file):
        result["already_registered"] = True
        log.info("expert %s already registered at %s", manifest.weights_sha256[:12], dest.root)
        return result
    previous = dest.read_json(MANIFEST).get("weights_file") if dest.exists(MANIFEST) else None
    dest.write_bytes(manifest.weights_file, src.read_bytes(manifest.weights_file))  # weights first
    dest.write_bytes(MANIFEST, src.read_bytes(posixpath.basename(MANIFEST)))  # manifest last
    again = validate_expert(dest.root)  # what landed is what was validated
    if not all(c.ok for c in again):
        raise RuntimeError(f"stored copy at {dest.root} failed validation: {[str(c) for c in again if not c.ok]}")
    if previous and previous != manifest.weights_file and "/" not in previous:
        dest.delete(previous)
    log.info("registered expert %s (cluster %s, %s) at %s", name, manifest.cluster_id, manifest.objective, dest.root)
    return result
