"""Self-describing expert and router checkpoints: safetensors weights + a versioned JSON manifest.

Layout under a prefix of an ArtifactStore (local folder or any fsspec URL, e.g. s3://...):
    <prefix>/weights-<sha256[:16]>.safetensors   written first (atomic, content-addressed)
    <prefix>/expert.json  (or router.json)        written last: the manifest names the weights
Content-addressed weights mean re-saving under the same prefix never leaves an old manifest
pointing at new weights: readers see the old pair or the new pair, never a mix.

Contributed weights are untrusted. Loading never unpickles: .pt/.pth/.ckpt/.bin/.pkl files and
files starting with pickle or zip (torch.save) magic bytes are refused before any parsing; the
safetensors header is parsed as plain JSON and checked against the declared architecture
(names, shapes, dtypes, byte ranges) before any tensor is read; then the sha256, the size limits
and finiteness are checked. validate_expert() returns every check; load_expert() raises
CheckpointError listing the failed ones.

Manifest fields (format_version 1): see ExpertManifest / RouterManifest. The declaration
ExpertDeclaration(prediction, schedule, time_input) is what hddm_core.diffusion.conversion needs.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import posixpath
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from hddm_core import __version__
from hddm_core.diffusion.conversion import ExpertDeclaration, ExpertVelocityField
from hddm_core.models.dit import build_expert_model, count_parameters
from hddm_core.models.presets import DiTConfig, RouterConfig
from hddm_core.models.router import build_router
from hddm_core.diffusion.objectives import get_objective
from hddm_core.diffusion.schedules import get_schedule
from hddm_core.storage import ArtifactStore, validate_key
from hddm_core.diffusion.time_inputs import check_time_input

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
ALLOWED_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
DEFAULT_MAX_WEIGHT_BYTES = 8 << 30  # XL/2 in fp32 is 2.4 GB
MAX_HEADER_BYTES = 16 << 20
LATENT_SPACES = ("pixel", "sd-vae")  # pixels in [-1, 1] | Stable Diffusion VAE latents (x scale)


class CheckpointError(ValueError):
    """A checkpoint failed validation; .checks holds every check that was run."""

    def __init__(self, message: str, checks: list["Check"] | None = None):
        super().__init__(message)
        self.checks = checks or []


class PickleRefused(CheckpointError):
    pass


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""

    def __str__(self) -> str:
        return f"[{'ok' if self.ok else 'FAIL'}] {self.name}: {self.detail}"


# -- manifests ----------------------------------------------------------------------------------
_STR, _INT, _NUM, _DICT = (str,), (int,), (int, float), (dict,)
_OPT_INT, _OPT_STR = (int, type(None)), (str, type(None))


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
    clustering_version: str | None = None
    extra: dict = field(default_factory=dict)
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
    cluster_id: int | None = None
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


_COMMON_SPEC = {
    "format": _STR, "format_version": _INT, "architecture": _STR, "preset": _STR, "config": _DICT,
    "latent_space": _STR, "latent_scale": _NUM, "image_resolution": _INT, "data_hash": _STR,
    "weights_file": _STR, "weights_sha256": _STR, "weights_bytes": _INT, "num_parameters": _INT,
    "dtype": _STR, "code_version": _STR, "created_at": _STR, "clustering_version": _OPT_STR, "extra": _DICT,
}
_SPECS = {
    "expert": {**_COMMON_SPEC, "objective": _STR, "prediction": _STR, "schedule": _STR, "time_input": _STR,
               "text_encoder": _STR, "text_dim": _INT, "cluster_id": _OPT_INT},
    "router": {**_COMMON_SPEC, "num_clusters": _INT, "cluster_ids": (list,), "schedule": _STR, "time_input": _STR},
}


@dataclass(frozen=True)
class _Kind:
    name: str
    manifest_cls: type
    manifest_name: str
    architecture: str
    config_cls: type
    build: Callable


KINDS = {
    "expert": _Kind("expert", ExpertManifest, "expert.json", "dit-expert", DiTConfig, build_expert_model),
    "router": _Kind("router", RouterManifest, "router.json", "dit-router", RouterConfig, build_router),
}
_BY_FORMAT = {k.manifest_cls.format: k for k in KINDS.values()}


def _schema_errors(raw: Any, kind: _Kind) -> list[str]:
    """Every problem with a raw manifest dict (types, values, consistency); empty when valid."""
    if not isinstance(raw, dict):
        return [f"manifest must be a JSON object, got {type(raw).__name__}"]
    spec = _SPECS[kind.name]
    errors = [f"missing field {k!r}" for k in spec if k not in raw
              and k not in ("clustering_version", "extra", "cluster_id")]
    errors += [f"unknown field {k!r}" for k in raw if k not in spec]
    for k, types in spec.items():
        if k in raw and (not isinstance(raw[k], types) or (isinstance(raw[k], bool) and bool not in types)):
            errors.append(f"field {k!r} must be {'/'.join(t.__name__ for t in types)}, got {raw[k]!r:.80}")
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


def _kind_errors(raw: dict, kind: _Kind, config) -> list[str]:
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


# -- locating a checkpoint ------------------------------------------------------------------------
def _refuse_pickle_name(location: str) -> None:
    if location.lower().endswith(PICKLE_SUFFIXES):
        raise PickleRefused(f"refusing {location!r}: pickle-based checkpoints ({', '.join(PICKLE_SUFFIXES)}) can run "
                            "arbitrary code when loaded; contributed weights must be safetensors + a JSON manifest. "
                            "Nothing was read.")


def _split(location: str) -> tuple[str, str]:
    if "://" in location:
        head, _, tail = location.rstrip("/").rpartition("/")
        return head, tail
    location = os.path.abspath(location)
    return os.path.dirname(location), os.path.basename(location)


def _locate(location: str, kind_name: str | None) -> tuple[ArtifactStore, str, _Kind | None]:
    """(store rooted at the checkpoint folder, manifest key, kind or None if not determinable yet)."""
    location = str(location)
    _refuse_pickle_name(location)
    head, tail = _split(location)
    if tail.endswith(".json") or tail.endswith(".safetensors"):
        folder, name = head, (tail if tail.endswith(".json") else None)
    else:
        folder, name = (location if "://" in location else os.path.abspath(location)), None
    if "://" not in folder and not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    store = ArtifactStore(folder)
    if name is None:
        candidates = [KINDS[kind_name]] if kind_name else list(KINDS.values())
        found = [k for k in candidates if store.exists(k.manifest_name)]
        if not found:
            wanted = " or ".join(k.manifest_name for k in candidates)
            raise FileNotFoundError(f"no {wanted} in {store.root}")
        name = found[0].manifest_name
    if not store.exists(name):
        raise FileNotFoundError(f"manifest not found: {store.uri(name)}")
    kind = KINDS[kind_name] if kind_name else next((k for k in KINDS.values() if k.manifest_name == name), None)
    return store, name, kind


def _as_store(store_or_dir) -> ArtifactStore:
    if isinstance(store_or_dir, ArtifactStore):
        return store_or_dir
    if isinstance(store_or_dir, (str, os.PathLike)):
        return ArtifactStore(os.fspath(store_or_dir))
    raise ValueError(f"expected an ArtifactStore, a local folder or a URL, got {type(store_or_dir).__name__}")


# -- weights file checks (no unpickling, no tensor parsing before the header is checked) ---------------
def _sniff(head: bytes) -> str | None:
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"pickle protocol {head[1]} magic bytes"
    if head.startswith(b"PK\x03\x04"):
        return "zip magic bytes (torch.save archive, which holds a pickle)"
    return None


def _read_header(store: ArtifactStore, key: str, size: int) -> dict:
    with store.fs.open(store.path(key), "rb") as f:
        head = f.read(8)
        kind = _sniff(head)
        if kind:
            raise PickleRefused(f"{store.uri(key)} starts with {kind}: refusing it; nothing was unpickled")
        if len(head) < 8:
            raise CheckpointError(f"{store.uri(key)} is too short to be safetensors ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or n + 8 > size:
            raise CheckpointError(f"safetensors header length {n} is implausible for a {size}-byte file")
        raw = f.read(n)
    if not raw.startswith(b"{"):
        raise CheckpointError(f"{store.uri(key)} is not a safetensors file (header is not a JSON object)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{store.uri(key)}: unreadable safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{store.uri(key)}: safetensors header is not an object")
    header.pop("__metadata__", None)
    end = 0
    for name, info in header.items():
        if not (isinstance(info, dict) and isinstance(info.get("shape"), list) and isinstance(info.get("data_offsets"), list)):
            raise CheckpointError(f"{store.uri(key)}: malformed header entry {name!r}")
        end = max(end, int(info["data_offsets"][1]))
    if 8 + n + end != size:
        raise CheckpointError(f"{store.uri(key)}: header byte ranges end at {8 + n + end}, file has {size} bytes")
    return header


def _expected_shapes(kind: _Kind, config) -> dict[str, tuple]:
    with torch.device("meta"):
        model = kind.build(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _weights_checks(store: ArtifactStore, manifest, kind: _Kind, max_bytes: int, check_hash: bool) -> list[Check]:
    checks: list[Check] = []
    key = manifest.weights_file
    if not store.exists(key):
        return [Check("weights-present", False, f"{store.uri(key)} is missing")]
    size = store.size(key)
    size_ok = size == manifest.weights_bytes and size <= max_bytes
    checks.append(Check("size", size_ok, f"{size} bytes (manifest {manifest.weights_bytes}, limit {max_bytes})"))
    if not size_ok:
        return checks
    try:
        header = _read_header(store, key, size)
    except PickleRefused:
        raise
    except CheckpointError as exc:
        return checks + [Check("safetensors-header", False, str(exc))]
    checks.append(Check("not-pickle", True, "safetensors magic: 8-byte length + JSON header"))
    expected = _expected_shapes(kind, kind.config_cls.from_dict(manifest.config))
    found = {k: tuple(v["shape"]) for k, v in header.items()}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [f"{k}: {found[k]} != {expected[k]}" for k in expected if k in found and found[k] != expected[k]]
    checks.append(Check("shapes", not (missing or unexpected or wrong),
                        f"{len(found)} tensors vs config" + (f"; missing {missing[:4]}" if missing else "")
                        + (f"; unexpected {unexpected[:4]}" if unexpected else "") + (f"; {wrong[:3]}" if wrong else "")))
    dtypes = {v["dtype"] for v in header.values()}
    dtype_ok = dtypes <= set(ALLOWED_DTYPES) and {DTYPE_NAMES[ALLOWED_DTYPES[d]] for d in dtypes} == {manifest.dtype}
    checks.append(Check("dtypes", dtype_ok, f"{sorted(dtypes)} (manifest {manifest.dtype})"))
    if check_hash:
        digest = _hash(store, key)
        checks.append(Check("sha256", digest == manifest.weights_sha256, f"{digest[:16]}... (manifest "
                                                                           f"{manifest.weights_sha256[:16]}...)"))
    return checks


def _hash(store: ArtifactStore, key: str) -> str:
    h = hashlib.sha256()
    with store.fs.open(store.path(key), "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _load_tensors(store: ArtifactStore, key: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    with store.local_path(key) as path:
        return load_file(path, device="cpu")


def _finite_check(tensors: dict[str, torch.Tensor]) -> Check:
    bad = [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]
    return Check("finite", not bad, "all values finite" if not bad else f"NaN/Inf in {bad[:5]}")


# -- public API -----------------------------------------------------------------------------------
@dataclass
class LoadedExpert:
    model: torch.nn.Module
    manifest: ExpertManifest
    checks: list[Check]
    uri: str


@dataclass
class LoadedRouter:
    model: torch.nn.Module
    manifest: RouterManifest
    checks: list[Check]
    uri: str


def _validate(location, kind_name: str | None, max_bytes: int, check_hash: bool, check_finite: bool):
    """(checks, manifest or None, store, kind, tensors or None). Raises only for missing files and pickles."""
    store, name, kind = _locate(location, kind_name)
    size = store.size(name)
    if size > MAX_HEADER_BYTES:
        return [Check("schema", False, f"manifest is {size} bytes (limit {MAX_HEADER_BYTES})")], None, store, kind, None
    try:
        raw = store.read_json(name)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return [Check("schema", False, f"{store.uri(name)} is not JSON: {exc}")], None, store, kind, None
    if kind is None:
        kind = _BY_FORMAT.get(raw.get("format")) if isinstance(raw, dict) else None
        if kind is None:
            fmt = raw.get("format") if isinstance(raw, dict) else None
            return [Check("schema", False, f"unknown format {fmt!r}; valid: {sorted(_BY_FORMAT)}")], None, store, None, None
    errors = _schema_errors(raw, kind)
    if errors:
        return [Check("schema", False, "; ".join(errors))], None, store, kind, None
    manifest = kind.manifest_cls(**raw)
    checks = [Check("schema", True, f"{manifest.format} v{manifest.format_version}")]
    checks += _weights_checks(store, manifest, kind, max_bytes, check_hash)
    tensors = None
    if check_finite and all(c.ok for c in checks):
        tensors = _load_tensors(store, manifest.weights_file)
        checks.append(_finite_check(tensors))
    return checks, manifest, store, kind, tensors


def validate_checkpoint(location, *, kind: str | None = None, max_bytes: int = DEFAULT_MAX_WEIGHT_BYTES,
                        check_hash: bool = True, check_finite: bool = True) -> list[Check]:
    """Every check on an expert or router checkpoint (folder, manifest or weights path / URL).

    Raises PickleRefused for pickle files (nothing is read past the magic bytes) and
    FileNotFoundError when there is no manifest; every other problem is a failed Check.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; valid: {sorted(KINDS)}")
    return _validate(location, kind, max_bytes, check_hash, check_finite)[0]


def validate_expert(location, **kwargs) -> list[Check]:
    return validate_checkpoint(location, kind="expert", **kwargs)


def validate_router(location, **kwargs) -> list[Check]:
    return validate_checkpoint(location, kind="router", **kwargs)


def _load(location, kind_name: str, device, max_bytes: int):
    checks, manifest, store, kind, tensors = _validate(location, kind_name, max_bytes, True, True)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise CheckpointError(f"{store.root}: checkpoint failed validation: " + "; ".join(map(str, failed)), checks)
    config = kind.config_cls.from_dict(manifest.config)
    with torch.device("meta"):  # no random init of weights about to be replaced (seconds at XL/2)
        model = kind.build(config)
    model.load_state_dict(tensors, strict=True, assign=True)  # the checked tensors, their dtype kept
    model = model.to(device=device).eval()
    return model, manifest, checks, store.root


def load_expert(location, *, device: str | torch.device = "cpu",
                max_bytes: int = DEFAULT_MAX_WEIGHT_BYTES) -> LoadedExpert:
    """Validate then load an expert (folder, expert.json or weights path, local or fsspec URL)."""
    return LoadedExpert(*_load(location, "expert", device, max_bytes))


def load_router(location, *, device: str | torch.device = "cpu",
                max_bytes: int = DEFAULT_MAX_WEIGHT_BYTES) -> LoadedRouter:
    return LoadedRouter(*_load(location, "router", device, max_bytes))


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


def _save(kind: _Kind, store_or_dir, key_prefix: str, model: torch.nn.Module, fields: dict) -> str:
    from safetensors.torch import save_file

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
        save_file(state, path, metadata={"format": kind.manifest_cls.format, "preset": config.preset})
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(8 << 20):
                h.update(block)
        digest = h.hexdigest()
        raw = {
            **_defaults(kind, config, fields), **fields,
            "architecture": kind.architecture, "preset": config.preset, "config": config.to_dict(),
            "weights_file": f"weights-{digest[:16]}.safetensors", "weights_sha256": digest,
            "weights_bytes": os.path.getsize(path), "num_parameters": count_parameters(model), "dtype": dtype,
            "code_version": __version__, "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "format": kind.manifest_cls.format, "format_version": FORMAT_VERSION,
        }
        errors = _schema_errors(raw, kind)
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


def _defaults(kind: _Kind, config, fields: dict) -> dict:
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


def inspect_checkpoint(location) -> str:
    """A human-readable summary: the manifest then every check (expert or router)."""
    try:
        checks, manifest, store, kind, _ = _validate(location, None, DEFAULT_MAX_WEIGHT_BYTES, True, True)
    except PickleRefused as exc:
        return f"{location}\n[FAIL] not-pickle: {exc}"
    lines = [f"{store.root} ({kind.name if kind else 'unknown kind'})"]
    if manifest is not None:
        d = manifest.to_dict()
        config = d.pop("config")
        lines += [f"  {k}: {json.dumps(v)}" for k, v in d.items()]
        lines.append("  config: " + json.dumps(config, sort_keys=True))
    lines.append("checks:")
    lines += [f"  {c}" for c in checks]
    lines.append("verdict: " + ("OK" if all(c.ok for c in checks) else "INVALID"))
    return "\n".join(lines)


inspect_expert = inspect_checkpoint
