"""Validating a checkpoint without unpickling: locate it, check the manifest, the safetensors header, sha256, finiteness.

The manifest is read capped and strict, its architecture bounded (limits); the weights are checked in
weights_checks (size by formula, header, dtypes, shapes, sha256) before any tensor is read; then
finiteness. Every problem is a failed Check with a reason code, including running past the
wall-clock budget; only pickles (PickleRefused) and missing files (FileNotFoundError) raise. With keep_bytes the manifest and weights are read once into memory
and every check runs on those bytes, so a caller can store exactly what was validated.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from hddm_core.checkpoints.errors import Check, PickleRefused
from hddm_core.checkpoints.manifest import BY_FORMAT, KINDS, SCHEMA_CODES, Kind, schema_errors
from hddm_core.checkpoints.pickle_guard import refuse_pickle_name
from hddm_core.checkpoints.weights_checks import Deadline, OverBudget, weights_checks, weights_sha256  # noqa: F401 (io)
from hddm_core.storage import loads_strict, ArtifactStore

DEFAULT_MAX_WEIGHT_BYTES = 8 << 30  # XL/2 in fp32 is 2.4 GB
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is ~2 KB
DEFAULT_TIME_BUDGET_S = 60.0  # one validation, wall clock (XL/2 fp32: ~5 s to hash and load on one core)


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


def _load_tensors(store: ArtifactStore, key: str, data: bytes | None) -> dict[str, torch.Tensor]:
    import safetensors.torch

    if data is not None:
        return safetensors.torch.load(data)
    with store.local_path(key) as path:
        return safetensors.torch.load_file(path, device="cpu")


def _finite_check(tensors: dict[str, torch.Tensor]) -> Check:
    bad = [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]
    return Check("finite", not bad, "all values finite" if not bad else f"NaN/Inf in {bad[:5]}")


def _schema_check(errors: list[str]) -> Check:
    """One failed schema Check; its code is the first error's own code when it has one (config bounds)."""
    code = next((e.split(":", 1)[0] for e in errors if e.split(":", 1)[0] in SCHEMA_CODES), "schema")
    return Check("schema", False, "; ".join(errors), code)


def _manifest(store: ArtifactStore, name: str, kind: Kind | None, v: Validation) -> bytes | None:
    """The manifest's bytes read once (a regular file, capped), parsed and checked into v; None on failure."""
    try:
        manifest_bytes = store.read_bytes(name, MAX_MANIFEST_BYTES)
    except ValueError as exc:  # not a regular file (FIFO, device), or over the cap
        v.checks.append(Check("schema", False, str(exc), "manifest-unreadable"))
        return None
    try:
        raw = loads_strict(manifest_bytes.decode("utf-8"))  # NaN, Infinity and out-of-int64 numbers refused
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError, strict-JSON refusals
        v.checks.append(Check("schema", False, f"{store.uri(name)} is not JSON: {str(exc)[:200]}", "manifest-not-json"))
        return None
    if kind is None:
        kind = v.kind = BY_FORMAT.get(raw.get("format")) if isinstance(raw, dict) else None
        if kind is None:
            fmt = raw.get("format") if isinstance(raw, dict) else None
            v.checks.append(Check("schema", False, f"unknown format {fmt!r:.60}; valid: {sorted(BY_FORMAT)}", "format"))
            return None
    errors = schema_errors(raw, kind)
    if errors:
        v.checks.append(_schema_check(errors))
        return None
    v.manifest = kind.manifest_cls(**raw)
    v.checks.append(Check("schema", True, f"{v.manifest.format} v{v.manifest.format_version}"))
    return manifest_bytes


def _run(v: Validation, name: str, max_bytes: int, check_hash: bool, check_finite: bool, keep_bytes: bool,
         deadline: Deadline) -> None:
    store = v.store
    manifest_bytes = _manifest(store, name, v.kind, v)
    if manifest_bytes is None:
        return
    manifest, kind = v.manifest, v.kind
    deadline.check("schema")
    if not store.exists(manifest.weights_file):
        v.checks.append(Check("weights-present", False, f"{store.uri(manifest.weights_file)} is missing"))
        return
    data = None
    if keep_bytes and store.size(manifest.weights_file) <= max_bytes:  # read once; every check below uses these bytes
        try:
            data = store.read_bytes(manifest.weights_file, max_bytes)
        except ValueError as exc:  # not a regular file, or grew past the cap
            v.checks.append(Check("size", False, str(exc), "weights-unreadable"))
            return
    config = kind.config_cls.from_dict(manifest.config)
    v.checks += weights_checks(store, manifest, kind, config, max_bytes, check_hash, data, deadline)
    if check_finite and all(c.ok for c in v.checks):
        deadline.check("sha256")
        try:
            v.tensors = _load_tensors(store, manifest.weights_file, data)
        except Exception as exc:  # noqa: BLE001 - the file changed after its checks, or the library refused it
            v.checks.append(Check("finite", False, f"tensors unreadable: {type(exc).__name__}: {str(exc)[:200]}",
                                  "tensors-unreadable"))
            return
        deadline.check("load")
        v.checks.append(_finite_check(v.tensors))
    if data is not None:
        v.files = ValidatedFiles(name, manifest_bytes, data)


def run_validation(location, kind_name: str | None, max_bytes: int, check_hash: bool, check_finite: bool,
                   keep_bytes: bool = False, time_budget_s: float | None = None) -> Validation:
    """One validation pass. Raises only for missing files and pickles; every other problem is a failed
    Check, including running past the wall-clock budget (time_budget_s, DEFAULT_TIME_BUDGET_S by default,
    checked between steps and on every 8 MiB hashed)."""
    budget = DEFAULT_TIME_BUDGET_S if time_budget_s is None else float(time_budget_s)
    deadline = Deadline(budget)
    store, name, kind = locate(location, kind_name)
    v = Validation([], None, store, kind)
    try:
        _run(v, name, max_bytes, check_hash, check_finite, keep_bytes, deadline)
    except OverBudget as exc:
        v.tensors = v.files = None
        v.checks.append(Check("time-budget", False, f"validation ran past its {budget:g} s budget (during {exc})"))
    return v


def validate_checkpoint(location, *, kind: str | None = None, max_bytes: int = DEFAULT_MAX_WEIGHT_BYTES,
                        check_hash: bool = True, check_finite: bool = True,
                        time_budget_s: float | None = None) -> list[Check]:
    """Every check on an expert or router checkpoint (folder, manifest or weights path / URL).

    Raises PickleRefused for pickle files (nothing is read past the magic bytes) and
    FileNotFoundError when there is no manifest; every other problem is a failed Check.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; valid: {sorted(KINDS)}")
    return run_validation(location, kind, max_bytes, check_hash, check_finite, time_budget_s=time_budget_s).checks


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
