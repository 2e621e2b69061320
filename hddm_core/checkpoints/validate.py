"""Validating a checkpoint without unpickling: locate it, check the manifest, the safetensors header, sha256, finiteness.

The safetensors header is parsed as plain JSON and checked against the declared architecture (names,
shapes, dtypes, byte ranges) before any tensor is read; then the sha256, the size limits and
finiteness are checked. Every problem is a failed Check; only pickles (PickleRefused) and missing
files (FileNotFoundError) raise. With keep_bytes the manifest and weights are read once into memory
and every check runs on those bytes, so a caller can store exactly what was validated.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import torch

from hddm_core.checkpoints.errors import Check, CheckpointError, PickleRefused
from hddm_core.checkpoints.manifest import ALLOWED_DTYPES, BY_FORMAT, DTYPE_NAMES, KINDS, Kind, schema_errors
from hddm_core.checkpoints.pickle_guard import refuse_pickle_bytes, refuse_pickle_name
from hddm_core.storage import loads_strict, ArtifactStore

DEFAULT_MAX_WEIGHT_BYTES = 8 << 30  # XL/2 in fp32 is 2.4 GB
MAX_HEADER_BYTES = 16 << 20


@dataclass(frozen=True)
class ValidatedFiles:
    """The exact bytes a validation read (keep_bytes=True): store these, not the source read again."""

    manifest_name: str
    manifest: bytes
    weights: bytes


@dataclass
class Validation:
    """What one validation pass found: checks, and (when the schema passed) manifest, tensors, bytes."""

    checks: list[Check]
    manifest: object | None
    store: ArtifactStore
    kind: Kind | None
    tensors: dict[str, torch.Tensor] | None = None
    files: ValidatedFiles | None = None


def weights_sha256(f: BinaryIO) -> str:
    """sha256 hex digest of a weights file object, read in 8 MiB blocks (the one place weights are hashed)."""
    h = hashlib.sha256()
    while block := f.read(8 << 20):
        h.update(block)
    return h.hexdigest()


# -- locating a checkpoint ------------------------------------------------------------------------
def _split(location: str) -> tuple[str, str]:
    if "://" in location:
        head, _, tail = location.rstrip("/").rpartition("/")
        return head, tail
    location = os.path.abspath(location)
    return os.path.dirname(location), os.path.basename(location)


def locate(location: str, kind_name: str | None) -> tuple[ArtifactStore, str, Kind | None]:
    """(store rooted at the checkpoint folder, manifest key, kind or None if not determinable yet)."""
    location = str(location)
    refuse_pickle_name(location)
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


# -- weights file checks (no unpickling, no tensor parsing before the header is checked) ---------------
def read_header(f: BinaryIO, uri: str, size: int) -> dict:
    """The safetensors header of an open weights file, checked for pickle magic and consistent byte ranges."""
    head = f.read(8)
    refuse_pickle_bytes(head, uri)
    if len(head) < 8:
        raise CheckpointError(f"{uri} is too short to be safetensors ({size} bytes)")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES or n + 8 > size:
        raise CheckpointError(f"safetensors header length {n} is implausible for a {size}-byte file")
    raw = f.read(n)
    if not raw.startswith(b"{"):
        raise CheckpointError(f"{uri} is not a safetensors file (header is not a JSON object)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{uri}: unreadable safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{uri}: safetensors header is not an object")
    header.pop("__metadata__", None)
    end = 0
    for name, info in header.items():
        if not (isinstance(info, dict) and isinstance(info.get("shape"), list) and isinstance(info.get("data_offsets"), list)):
            raise CheckpointError(f"{uri}: malformed header entry {name!r}")
        end = max(end, int(info["data_offsets"][1]))
    if 8 + n + end != size:
        raise CheckpointError(f"{uri}: header byte ranges end at {8 + n + end}, file has {size} bytes")
    return header


def _expected_shapes(kind: Kind, config) -> dict[str, tuple]:
    with torch.device("meta"):
        model = kind.build(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _open_weights(store: ArtifactStore, key: str, data: bytes | None):
    return io.BytesIO(data) if data is not None else store.fs.open(store.path(key), "rb")


def _weights_checks(store: ArtifactStore, manifest, kind: Kind, max_bytes: int, check_hash: bool,
                    data: bytes | None) -> list[Check]:
    """Size, header, shapes, dtypes and sha256 of the weights (`data` when the bytes are already read)."""
    checks: list[Check] = []
    key = manifest.weights_file
    size = len(data) if data is not None else store.size(key)
    size_ok = size == manifest.weights_bytes and size <= max_bytes
    checks.append(Check("size", size_ok, f"{size} bytes (manifest {manifest.weights_bytes}, limit {max_bytes})"))
    if not size_ok:
        return checks
    try:
        with _open_weights(store, key, data) as f:
            header = read_header(f, store.uri(key), size)
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
        with _open_weights(store, key, data) as f:
            digest = weights_sha256(f)
        checks.append(Check("sha256", digest == manifest.weights_sha256, f"{digest[:16]}... (manifest "
                                                                           f"{manifest.weights_sha256[:16]}...)"))
    return checks


def _load_tensors(store: ArtifactStore, key: str, data: bytes | None) -> dict[str, torch.Tensor]:
    import safetensors.torch

    if data is not None:
        return safetensors.torch.load(data)
    with store.local_path(key) as path:
        return safetensors.torch.load_file(path, device="cpu")


def _finite_check(tensors: dict[str, torch.Tensor]) -> Check:
    bad = [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]
    return Check("finite", not bad, "all values finite" if not bad else f"NaN/Inf in {bad[:5]}")


def run_validation(location, kind_name: str | None, max_bytes: int, check_hash: bool, check_finite: bool,
                   keep_bytes: bool = False) -> Validation:
    """One validation pass. Raises only for missing files and pickles; every other problem is a failed Check."""
    store, name, kind = locate(location, kind_name)
    size = store.size(name)
    if size > MAX_HEADER_BYTES:
        return Validation([Check("schema", False, f"manifest is {size} bytes (limit {MAX_HEADER_BYTES})")], None, store, kind)
    manifest_bytes = store.read_bytes(name)
    try:
        raw = loads_strict(manifest_bytes.decode("utf-8"))  # NaN, Infinity and out-of-int64 numbers refused
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError and the store's strict-JSON refusals
        return Validation([Check("schema", False, f"{store.uri(name)} is not JSON: {exc}")], None, store, kind)
    if kind is None:
        kind = BY_FORMAT.get(raw.get("format")) if isinstance(raw, dict) else None
        if kind is None:
            fmt = raw.get("format") if isinstance(raw, dict) else None
            return Validation([Check("schema", False, f"unknown format {fmt!r}; valid: {sorted(BY_FORMAT)}")], None, store, None)
    errors = schema_errors(raw, kind)
    if errors:
        return Validation([Check("schema", False, "; ".join(errors))], None, store, kind)
    manifest = kind.manifest_cls(**raw)
    checks = [Check("schema", True, f"{manifest.format} v{manifest.format_version}")]
    if not store.exists(manifest.weights_file):
        return Validation(checks + [Check("weights-present", False, f"{store.uri(manifest.weights_file)} is missing")],
                          manifest, store, kind)
    data = None
    if keep_bytes and store.size(manifest.weights_file) <= max_bytes:  # read once; every check below uses these bytes
        data = store.read_bytes(manifest.weights_file)
    checks += _weights_checks(store, manifest, kind, max_bytes, check_hash, data)
    result = Validation(checks, manifest, store, kind)
    if check_finite and all(c.ok for c in checks):
        result.tensors = _load_tensors(store, manifest.weights_file, data)
        checks.append(_finite_check(result.tensors))
    if data is not None:
        result.files = ValidatedFiles(name, manifest_bytes, data)
    return result


def validate_checkpoint(location, *, kind: str | None = None, max_bytes: int = DEFAULT_MAX_WEIGHT_BYTES,
                        check_hash: bool = True, check_finite: bool = True) -> list[Check]:
    """Every check on an expert or router checkpoint (folder, manifest or weights path / URL).

    Raises PickleRefused for pickle files (nothing is read past the magic bytes) and
    FileNotFoundError when there is no manifest; every other problem is a failed Check.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; valid: {sorted(KINDS)}")
    return run_validation(location, kind, max_bytes, check_hash, check_finite).checks


def validate_expert(location, **kwargs) -> list[Check]:
    return validate_checkpoint(location, kind="expert", **kwargs)


def validate_router(location, **kwargs) -> list[Check]:
    return validate_checkpoint(location, kind="router", **kwargs)


def inspect_checkpoint(location) -> str:
    """A human-readable summary: the manifest then every check (expert or router)."""
    try:
        result = run_validation(location, None, DEFAULT_MAX_WEIGHT_BYTES, True, True)
    except PickleRefused as exc:
        return f"{location}\n[FAIL] not-pickle: {exc}"
    lines = [f"{result.store.root} ({result.kind.name if result.kind else 'unknown kind'})"]
    if result.manifest is not None:
        d = result.manifest.to_dict()
        config = d.pop("config")
        lines += [f"  {k}: {json.dumps(v)}" for k, v in d.items()]
        lines.append("  config: " + json.dumps(config, sort_keys=True))
    lines.append("checks:")
    lines += [f"  {c}" for c in result.checks]
    lines.append("verdict: " + ("OK" if all(c.ok for c in result.checks) else "INVALID"))
    return "\n".join(lines)


inspect_expert = inspect_checkpoint
