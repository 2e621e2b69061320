"""The expert and router manifest schema (format_version 1), written once as dataclasses; the JSON checks derive from it.

ExpertManifest / RouterManifest are the fields of expert.json / router.json. The type each JSON field
must have, and which fields may be left out, are read from these dataclasses (schema_errors), so a
field is declared in one place. The declaration ExpertDeclaration(prediction, schedule, time_input)
is what hddm_core.diffusion.conversion needs.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from hddm_core.diffusion.conversion import ExpertDeclaration
from hddm_core.diffusion.objectives import get_objective
from hddm_core.diffusion.schedules import get_schedule
from hddm_core.diffusion.time_inputs import check_time_input
from hddm_core.checkpoints.limits import bound_errors, parameter_count
from hddm_core.models.dit import build_expert_model
from hddm_core.models.presets import DiTConfig, RouterConfig
from hddm_core.models.router import build_router

FORMAT_VERSION = 1
ALLOWED_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}  # safetensors tag -> dtype
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}  # the manifest's dtype
LATENT_SPACES = ("pixel", "sd-vae")  # pixels in [-1, 1] | Stable Diffusion VAE latents (x scale)
SCHEMA_CODES = ("config-bounds", "num-parameters")  # schema errors with their own reason code (prefix "code: ")
_OPTIONAL = "optional"  # field metadata: the JSON may leave the field out (its default applies)


def _may_be_absent(**kwargs):
    return field(metadata={_OPTIONAL: True}, **kwargs)


@dataclass(frozen=True)
class _Common:
    """Fields every checkpoint manifest shares (architecture, data, weights, provenance)."""

    architecture: str
    preset: str
    config: dict
    latent_space: str
    latent_scale: float
    image_resolution: int
    data_hash: str
    weights_file: str
    weights_sha256: str
    weights_bytes: int
    num_parameters: int
    dtype: str
    code_version: str
    created_at: str
    clustering_version: str | None = _may_be_absent(default=None)
    extra: dict = _may_be_absent(default_factory=dict)
    format: str = ""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExpertManifest(_Common):
    objective: str = ""
    prediction: str = ""
    schedule: str = ""
    time_input: str = ""
    text_encoder: str = ""
    text_dim: int = 0
    cluster_id: int | None = _may_be_absent(default=None)
    format: str = "hddm-expert"

    @property
    def declaration(self) -> ExpertDeclaration:
        return ExpertDeclaration(self.prediction, self.schedule, self.time_input)


@dataclass(frozen=True)
class RouterManifest(_Common):
    num_clusters: int = 0
    cluster_ids: list = field(default_factory=list)
    schedule: str = "linear"  # the path the router sees x_t on (the sampler's)
    time_input: str = "scaled-1000"  # how the router's network reads t (1000 t by default)
    format: str = "hddm-router"


def _json_types(annotation) -> tuple[type, ...]:
    """The JSON value types a field annotation accepts: float also takes int, `X | None` also takes null."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for arg in typing.get_args(annotation) for t in _json_types(arg))
    return (int, float) if annotation is float else (annotation,)


def field_spec(manifest_cls: type) -> dict[str, tuple[tuple[type, ...], bool]]:
    """{field: (accepted JSON types, required)} read from a manifest dataclass."""
    hints = typing.get_type_hints(manifest_cls)
    return {f.name: (_json_types(hints[f.name]), not f.metadata.get(_OPTIONAL, False))
            for f in dataclasses.fields(manifest_cls)}


@dataclass(frozen=True)
class Kind:
    """A checkpoint kind: its manifest class and file, architecture tag, config class and model builder."""

    name: str
    manifest_cls: type
    manifest_name: str
    architecture: str
    config_cls: type
    build: Callable


KINDS = {
    "expert": Kind("expert", ExpertManifest, "expert.json", "dit-expert", DiTConfig, build_expert_model),
    "router": Kind("router", RouterManifest, "router.json", "dit-router", RouterConfig, build_router),
}
BY_FORMAT = {k.manifest_cls.format: k for k in KINDS.values()}
_SPECS = {name: field_spec(kind.manifest_cls) for name, kind in KINDS.items()}


def schema_errors(raw: Any, kind: Kind) -> list[str]:
    """Every problem with a raw manifest dict (types, values, consistency); empty when valid."""
    if not isinstance(raw, dict):
        return [f"manifest must be a JSON object, got {type(raw).__name__}"]
    spec = _SPECS[kind.name]
    errors = [f"missing field {k!r}" for k, (_, required) in spec.items() if required and k not in raw]
    errors += [f"unknown field {k!r}" for k in raw if k not in spec]
    for k, (types_, _) in spec.items():
        if k in raw and (not isinstance(raw[k], types_) or (isinstance(raw[k], bool) and bool not in types_)):
            errors.append(f"field {k!r} must be {'/'.join(t.__name__ for t in types_)}, got {raw[k]!r:.80}")
    if errors:
        return errors
    if raw["format"] != kind.manifest_cls.format:
        errors.append(f"format {raw['format']!r}, expected {kind.manifest_cls.format!r}")
    if raw["format_version"] != FORMAT_VERSION:
        errors.append(f"format_version {raw['format_version']} is not supported (this code reads {FORMAT_VERSION})")
    if raw["architecture"] != kind.architecture:
        errors.append(f"architecture {raw['architecture']!r}, expected {kind.architecture!r}")
    try:
        config = kind.config_cls.from_dict(raw["config"])
        if config.preset != raw["preset"]:
            errors.append(f"preset {raw['preset']!r} disagrees with config.preset {config.preset!r}")
    except (ValueError, TypeError) as exc:
        config = None
        errors.append(f"config: {exc}")
    if config is not None:  # bounded before anything is built from it; then the parameter count by formula
        errors += [f"config-bounds: {e}" for e in bound_errors(config)]
        if not errors and raw["num_parameters"] != parameter_count(config):
            errors.append(f"num-parameters: num_parameters {raw['num_parameters']} disagrees with the config's "
                          f"{parameter_count(config)}")
    if raw["latent_space"] not in LATENT_SPACES:
        errors.append(f"latent_space {raw['latent_space']!r} is not one of {list(LATENT_SPACES)}")
    if not raw["latent_scale"] > 0:
        errors.append(f"latent_scale must be > 0, got {raw['latent_scale']}")
    if raw["image_resolution"] <= 0:
        errors.append(f"image_resolution must be > 0, got {raw['image_resolution']}")
    wf = raw["weights_file"]
    if "/" in wf or "\\" in wf or not wf.endswith(".safetensors") or wf.startswith("."):
        errors.append(f"weights_file {wf!r} must be a plain file name ending in .safetensors")
    if len(raw["weights_sha256"]) != 64 or any(ch not in "0123456789abcdef" for ch in raw["weights_sha256"]):
        errors.append(f"weights_sha256 {raw['weights_sha256']!r:.80} is not a sha256 hex digest")
    if raw["dtype"] not in DTYPE_NAMES.values():
        errors.append(f"dtype {raw['dtype']!r} is not one of {sorted(DTYPE_NAMES.values())}")
    errors += _kind_errors(raw, kind, config)
    return errors


def _kind_errors(raw: dict, kind: Kind, config) -> list[str]:
    errors: list[str] = []
    try:
        check_time_input(raw["time_input"])
        get_schedule(raw["schedule"])
    except ValueError as exc:
        errors.append(str(exc))
    if kind.name == "expert":
        try:
            obj = get_objective(raw["objective"], prediction=raw["prediction"], schedule=raw["schedule"],
                                time_input=raw["time_input"])
            ExpertDeclaration(obj.prediction, obj.schedule, obj.time_input)
        except ValueError as exc:
            errors.append(f"objective/declaration: {exc}")
        if config is not None and raw["text_dim"] != config.text_dim:
            errors.append(f"text_dim {raw['text_dim']} disagrees with config.text_dim {config.text_dim}")
        if raw.get("cluster_id") is not None and raw["cluster_id"] < 0:
            errors.append(f"cluster_id must be >= 0 or null, got {raw['cluster_id']}")
    else:
        ids = raw["cluster_ids"]
        if config is not None and raw["num_clusters"] != config.num_clusters:
            errors.append(f"num_clusters {raw['num_clusters']} disagrees with config.num_clusters {config.num_clusters}")
        if len(ids) != raw["num_clusters"] or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) \
                or len(set(ids)) != len(ids):
            errors.append(f"cluster_ids must be {raw['num_clusters']} distinct integers, got {ids!r:.120}")
    return errors
