"""Registering a contributed expert: validate the untrusted checkpoint, then store it under the
experts prefix. Only safetensors + the JSON manifest are read (never unpickled); every check of
hddm_core.checkpoints (schema, shapes, sha256, finite values) must pass, then a smoke forward pass of the
loaded network on random inputs must return finite values of the input's shape. The checkpoint is read,
hashed and smoke-forwarded once, and the bytes stored are the bytes validated (a caller that already
vetted the expert, hddm_core.contrib.compatibility.vet_expert, passes that result and nothing is redone).
The stored copy is weights first, manifest last, so readers see the new pair whole or not at all.
"""
from __future__ import annotations

import logging

import torch

from hddm_core.checkpoints import CheckpointError, LoadedExpert, PickleRefused, load_expert
from hddm_core.contrib.name_lock import NameBusy, name_lock  # noqa: F401 - NameBusy re-exported
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


def _vet_for_registry(source: str) -> tuple[LoadedExpert, list[str]]:
    """(the expert loaded once with the bytes validated, one line per check); ValueError if any check fails."""
    try:
        loaded = load_expert(source, keep_bytes=True)  # PickleRefused / FileNotFoundError propagate
    except PickleRefused:
        raise
    except CheckpointError as exc:
        failed = [c for c in exc.checks if not c.ok] or [str(exc)]
        raise ValueError(f"expert {source!r} rejected: " + "; ".join(map(str, failed))) from None
    smoke = smoke_forward(loaded.model, loaded.manifest)
    return loaded, [str(c) for c in loaded.checks] + [f"[OK] smoke-forward: {smoke}"]


class NameTaken(ValueError):
    """The expert name already holds a different expert (and replacing was not asked for)."""


def register_expert(store: ArtifactStore, source: str, experts_prefix: str, name: str, *, vetted=None,
                    replace: bool = True) -> dict:
    """Validate `source` (folder or URL with expert.json) and copy it to store/experts_prefix/name.

    vetted: a passed hddm_core.contrib.compatibility.Vetting of `source` loaded with keep_bytes=True;
    its checks stand and its bytes are stored (no second read, hash or smoke forward).
    replace: whether a name holding different weights may be overwritten (the register stage: yes;
    a contributor's submission: no, NameTaken). The comparison and the publication run under the
    name's registration lock (name_lock), so of two registrations racing on one name exactly one
    publishes and the other raises NameBusy or NameTaken."""
    check_prefix(experts_prefix, "experts_prefix")
    check_key_name(name, "expert name")
    if vetted is None:
        loaded, summary = _vet_for_registry(source)
    else:
        if not vetted.ok or vetted.loaded.files is None:
            raise ValueError(f"expert {source!r}: register_expert(vetted=...) needs a passed vetting loaded with "
                             "keep_bytes=True (the bytes validated are the bytes stored)")
        loaded, summary = vetted.loaded, [str(c) for c in vetted.checks]
    manifest, files = loaded.manifest, loaded.files
    check_key_name(manifest.weights_file, "weights_file")

    prefix = f"{experts_prefix}/{name}"
    dest = store.child(prefix)
    result = {"uri": dest.root, "prefix": prefix, "weights_sha256": manifest.weights_sha256, "checks": summary,
              "cluster_id": manifest.cluster_id, "objective": manifest.objective, "already_registered": False}
    with name_lock(store, prefix):
        held = dest.read_json(MANIFEST) if dest.exists(MANIFEST) else {}
        held = held if isinstance(held, dict) else {"weights_sha256": None}  # unreadable: a different expert
        if held.get("weights_sha256") == manifest.weights_sha256 and dest.exists(manifest.weights_file):
            result["already_registered"] = True
            log.info("expert %s already registered at %s", manifest.weights_sha256[:12], dest.root)
            return result
        if held and not replace:
            raise NameTaken(f"refused: {dest.root} already holds a different expert "
                            f"({str(held.get('weights_sha256'))[:12]}...); choose another name")
        previous = held.get("weights_file")
        dest.write_bytes(manifest.weights_file, files.weights)  # weights first: the bytes validated
        landed = dest.size(manifest.weights_file)  # the bytes were validated; only a short write is left to catch
        if landed != len(files.weights):
            raise RuntimeError(f"stored copy at {dest.root} has {landed} weight bytes, {len(files.weights)} were written")
        dest.write_bytes(MANIFEST, files.manifest)  # manifest last: now the new pair is visible
        if isinstance(previous, str) and previous != manifest.weights_file and "/" not in previous:
            dest.delete(previous)
    log.info("registered expert %s (cluster %s, %s) at %s", name, manifest.cluster_id, manifest.objective, dest.root)
    return result
