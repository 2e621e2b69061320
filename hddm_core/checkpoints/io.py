"""Saving and loading expert and router checkpoints: safetensors weights + the JSON manifest, written weights first.

Layout under a prefix of an ArtifactStore (local folder or any fsspec URL, e.g. s3://...):
    <prefix>/weights-<sha256[:16]>.safetensors   written first (atomic, content-addressed)
    <prefix>/expert.json  (or router.json)        written last: the manifest names the weights
Content-addressed weights mean re-saving under the same prefix never leaves an old manifest
pointing at new weights: readers see the old pair or the new pair, never a mix. Loading validates
first (hddm_core.checkpoints.validate) and raises CheckpointError listing the failed checks.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import posixpath
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from hddm_core import __version__
from hddm_core.checkpoints.errors import Check, CheckpointError
from hddm_core.checkpoints.manifest import (DTYPE_NAMES, FORMAT_VERSION, KINDS, ExpertManifest, Kind, RouterManifest,
                                            schema_errors)
from hddm_core.checkpoints.validate import DEFAULT_MAX_WEIGHT_BYTES, ValidatedFiles, run_validation, weights_sha256
from hddm_core.data.safetensors_bytes import canonical_safetensors
from hddm_core.diffusion.conversion import ExpertVelocityField
from hddm_core.diffusion.objectives import get_objective
from hddm_core.models.dit import count_parameters
from hddm_core.storage import ArtifactStore, validate_key

log = logging.getLogger(__name__)


@dataclass
class LoadedExpert:
    model: torch.nn.Module
    manifest: ExpertManifest
    checks: list[Check]
    uri: str
    files: ValidatedFiles | None = None  # the exact bytes validated (load_expert(..., keep_bytes=True))


@dataclass
class LoadedRouter:
    model: torch.nn.Module
    manifest: RouterManifest
    checks: list[Check]
    uri: str


def _as_store(store_or_dir) -> ArtifactStore:
    if isinstance(store_or_dir, ArtifactStore):
        return store_or_dir
    if isinstance(store_or_dir, (str, os.PathLike)):
        return ArtifactStore(os.fspath(store_or_dir))
    raise ValueError(f"expected an ArtifactStore, a local folder or a URL, got {type(store_or_dir).__name__}")


def _load(location, kind_name: str, device, max_bytes: int, keep_bytes: bool = False):
    v = run_validation(location, kind_name, max_bytes, True, True, keep_bytes=keep_bytes)
    failed = [c for c in v.checks if not c.ok]
    if failed:
        raise CheckpointError(f"{v.store.root}: checkpoint failed validation: " + "; ".join(map(str, failed)), v.checks)
    config = v.kind.config_cls.from_dict(v.manifest.config)
    with torch.device("meta"):  # no random init of weights about to be replaced (seconds at XL/2)
        model = v.kind.build(config)
    model.load_state_dict(v.tensors, strict=True, assign=True)  # the checked tensors, their dtype kept
    model = model.to(device=device).eval()
    return model, v.manifest, v.checks, v.store.root, v.files


def load_expert(location, *, device: str | torch.device = "cpu", max_bytes: int = DEFAULT_MAX_WEIGHT_BYTES,
                keep_bytes: bool = False) -> LoadedExpert:
    """Validate then load an expert (folder, expert.json or weights path, local or fsspec URL).

    keep_bytes: read the manifest and weights once into memory, validate those bytes and keep them
    in .files, so a caller that stores the expert writes exactly what was validated."""
    return LoadedExpert(*_load(location, "expert", device, max_bytes, keep_bytes))


def load_router(location, *, device: str | torch.device = "cpu",
                max_bytes: int = DEFAULT_MAX_WEIGHT_BYTES) -> LoadedRouter:
    return LoadedRouter(*_load(location, "router", device, max_bytes)[:4])


def velocity_expert_from_loaded(loaded: LoadedExpert, sampler=None, guard=None) -> ExpertVelocityField:
    """The loaded expert as a velocity field on the sampler's path (hddm_core.diffusion.conversion)."""
    return ExpertVelocityField(loaded.model, loaded.manifest.declaration, sampler=sampler, guard=guard)


def _state_for_saving(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    dtypes = {v.dtype for v in state.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in DTYPE_NAMES:
        raise ValueError(f"weights must share one dtype among {sorted(DTYPE_NAMES.values())}, got {sorted(map(str, dtypes))}")
    bad = [k for k, v in state.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"refusing to save non-finite weights: NaN/Inf in {bad[:5]}")
    return state, DTYPE_NAMES[next(iter(dtypes))]


def _save(kind: Kind, store_or_dir, key_prefix: str, model: torch.nn.Module, fields: dict) -> str:
    from safetensors.torch import save

    store = _as_store(store_or_dir)
    validate_key(key_prefix)
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    config = getattr(model, "config", None)
    if not isinstance(config, kind.config_cls):
        raise ValueError(f"save_{kind.name} needs a model with a {kind.config_cls.__name__} .config, "
                         f"got {type(config).__name__}")
    fields = dict(fields)
    derived = {"architecture", "preset", "config", "weights_file", "weights_sha256", "weights_bytes",
               "num_parameters", "dtype", "code_version", "created_at", "format", "format_version"}
    clash = sorted(derived & set(fields))
    if clash:
        raise ValueError(f"manifest fields {clash} are derived from the model and weights; do not pass them")
    state, dtype = _state_for_saving(model)
    with tempfile.TemporaryDirectory(prefix="hddm-save-") as tmp:
        path = os.path.join(tmp, "weights.safetensors")
        data = canonical_safetensors(save(state, metadata={"format": kind.manifest_cls.format, "preset": config.preset}))
        with open(path, "wb") as f:  # canonical: the same tensors give the same bytes in every process
            f.write(data)
        with open(path, "rb") as f:
            digest = weights_sha256(f)
        raw = {
            **_defaults(kind, config, fields), **fields,
            "architecture": kind.architecture, "preset": config.preset, "config": config.to_dict(),
            "weights_file": f"weights-{digest[:16]}.safetensors", "weights_sha256": digest,
            "weights_bytes": os.path.getsize(path), "num_parameters": count_parameters(model), "dtype": dtype,
            "code_version": __version__, "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "format": kind.manifest_cls.format, "format_version": FORMAT_VERSION,
        }
        errors = schema_errors(raw, kind)
        if errors:  # nothing written yet
            raise ValueError(f"invalid {kind.name} manifest: " + "; ".join(errors))
        manifest_key = posixpath.join(key_prefix, kind.manifest_name)
        previous = store.read_json(manifest_key).get("weights_file") if store.exists(manifest_key) else None
        store.put_file(path, posixpath.join(key_prefix, raw["weights_file"]))  # weights first
    store.write_json(manifest_key, raw)  # manifest last: now the new pair is visible
    if previous and previous != raw["weights_file"] and isinstance(previous, str) and "/" not in previous:
        store.delete(posixpath.join(key_prefix, previous))
    log.info("saved %s %s (%s, %d parameters)", kind.name, store.uri(key_prefix), config.preset, raw["num_parameters"])
    return store.uri(key_prefix)


def _defaults(kind: Kind, config, fields: dict) -> dict:
    """Defaults filled from the objective preset and the config; explicit fields override them."""
    out: dict[str, Any] = {"clustering_version": None, "extra": {}}
    pixel = fields.get("latent_space", "pixel") == "pixel"
    if pixel:
        out.update(latent_scale=1.0, image_resolution=config.input_size)
    if kind.name == "expert":
        if "objective" not in fields:
            raise ValueError("manifest_fields needs 'objective' (e.g. 'ddpm-eps' or 'flow-matching')")
        base = get_objective(fields["objective"], **{k: fields[k] for k in ("prediction", "schedule", "time_input")
                                                      if k in fields})
        out.update(prediction=base.prediction, schedule=base.schedule, time_input=base.time_input,
                   text_dim=config.text_dim, cluster_id=None)
    else:
        out.update(num_clusters=config.num_clusters, cluster_ids=list(range(config.num_clusters)),
                   schedule=RouterManifest.schedule, time_input=RouterManifest.time_input)
    return out


def save_expert(store_or_dir, key_prefix: str, model: torch.nn.Module, manifest_fields: dict) -> str:
    """Write <prefix>/weights-<sha>.safetensors then <prefix>/expert.json; returns the prefix URI.

    manifest_fields: objective (required; prediction/schedule/time_input default to the objective
    preset's and may be overridden, e.g. time_input='discrete-999' for converted DiTs),
    latent_space ('pixel' | 'sd-vae'), latent_scale and image_resolution (required for latents),
    text_encoder, data_hash, cluster_id, clustering_version, extra (JSON object).
    """
    return _save(KINDS["expert"], store_or_dir, key_prefix, model, manifest_fields)


def save_router(store_or_dir, key_prefix: str, model: torch.nn.Module, manifest_fields: dict) -> str:
    """Like save_expert; manifest_fields: cluster_ids (default 0..K-1), time_input, schedule,
    latent_space, latent_scale, image_resolution, data_hash, clustering_version, extra."""
    return _save(KINDS["router"], store_or_dir, key_prefix, model, manifest_fields)
