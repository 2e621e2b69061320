"""Where an expert's weights start: `init` of the train-expert stage resolved to an expert folder.

"scratch" stays scratch; a converted expert folder (or URL) is used as it is (load_init validates
it: schema, hash, shapes, never unpickled); a public DiT checkpoint file (.pt read with
torch.load(weights_only=True), or .safetensors; a local path or a store URL) is converted once by
hddm_core.checkpoints.dit_import into <run>/init, a self-describing expert declaring the run's latent
space and text encoder, its source hash recorded, and reused while the source hash is unchanged.
An eps-predicting expert keeps DiT's eps output rows; any other prediction starts from a zero head.
"""
from __future__ import annotations

import logging
import os

from hddm_core.pipeline.declarations import is_dit_checkpoint
from hddm_core.storage import ArtifactStore
from hddm_core.training.config import INIT_SCRATCH

log = logging.getLogger(__name__)
INIT_PREFIX = "init"


def _source_hash(path: str) -> str:
    from hddm_core.manifests import sha256_bytes

    with open(path, "rb") as f:
        return sha256_bytes(f.read())


def convert_dit_init(path: str, run_store: ArtifactStore, *, objective: str, architecture: str, text_dim: int,
                     manifest_fields: dict) -> str:
    """Convert the DiT checkpoint at local `path` into run_store/init (reused when already converted)."""
    from hddm_core.checkpoints.dit_import import DIT_TIME_INPUT, convert_dit_checkpoint
    from hddm_core.checkpoints import save_expert
    from hddm_core.diffusion.objectives import get_objective
    from hddm_core.diffusion.predictions import EPS
    from hddm_core.models.presets import expert_config

    source = _source_hash(path)
    key = f"{INIT_PREFIX}/expert.json"
    if run_store.exists(key) and run_store.read_json(key).get("extra", {}).get("source_sha256") == source:
        return run_store.uri(INIT_PREFIX)
    keep_eps = get_objective(objective).prediction == EPS
    heads = expert_config(architecture).num_heads
    result = convert_dit_checkpoint(path, text_dim=text_dim, num_heads=heads, keep_eps_head=keep_eps)
    fields = {"objective": objective, "time_input": DIT_TIME_INPUT, **manifest_fields,
              "extra": {"converted_from": os.path.basename(path), "source_sha256": source,
                        "t_star": result.report.t_star, "keep_eps_head": keep_eps,
                        "transferred": len(result.report.transferred), "derived": sorted(result.report.derived),
                        "reinitialised": len(result.report.reinitialised)}}
    uri = save_expert(run_store, INIT_PREFIX, result.model, fields)
    log.info("converted DiT checkpoint %s into %s", path, uri)
    return uri


def resolve_init(init: str, run_store: ArtifactStore, **convert) -> str:
    """The `init` a training config takes: scratch, or an expert folder/URL (converting a DiT file first)."""
    if init == INIT_SCRATCH or not is_dit_checkpoint(init):
        return init
    if os.path.isfile(init):
        return convert_dit_init(init, run_store, **convert)
    parent, _, name = init.rstrip("/").rpartition("/")
    source = ArtifactStore(parent or ".")
    if not source.exists(name):
        raise FileNotFoundError(f"init {init!r}: no such DiT checkpoint")
    with source.local_path(name) as local:
        return convert_dit_init(local, run_store, **convert)
