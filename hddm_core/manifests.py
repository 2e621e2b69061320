"""Stage manifests: a stage writes its outputs, then its manifest last; readers trust only outputs
a manifest names; a stage whose manifest has the same config and input hashes is skipped.

Layout: <stage prefix>/_manifest.json beside the outputs it lists.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from hddm_core import __version__
from hddm_core.storage import ArtifactStore

MANIFEST_NAME = "_manifest.json"
MANIFEST_VERSION = 1


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_config(config: Any) -> str:
    """Stable hash of a JSON-able config (sorted keys, no whitespace)."""
    return sha256_bytes(json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode())


def hash_store_object(store: ArtifactStore, key: str, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with store.fs.open(store.path(key), "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class StageManifest:
    stage: str
    config: dict
    config_hash: str
    inputs: dict[str, str]  # name -> content hash (usually an upstream manifest's hash)
    outputs: dict[str, dict]  # key (relative to the stage prefix) -> {"sha256": ..., "bytes": ...}
    counts: dict[str, Any] = field(default_factory=dict)
    code_version: str = __version__
    created_at: str = ""
    version: int = MANIFEST_VERSION

    @property
    def inputs_hash(self) -> str:
        return hash_config(self.inputs)

    @property
    def content_hash(self) -> str:
        """What downstream stages record as this stage's input hash."""
        return hash_config({"config": self.config_hash, "inputs": self.inputs, "outputs": self.outputs})


def describe_outputs(store: ArtifactStore, prefix: str, keys: list[str]) -> dict[str, dict]:
    return {k: {"sha256": hash_store_object(store, f"{prefix}/{k}"), "bytes": store.size(f"{prefix}/{k}")}
            for k in keys}


def write_manifest(store: ArtifactStore, prefix: str, manifest: StageManifest) -> str:
    """Write the manifest last, after checking every named output exists."""
    missing = [k for k in manifest.outputs if not store.exists(f"{prefix}/{k}")]
    if missing:
        raise RuntimeError(f"stage {manifest.stage!r}: outputs named in the manifest are missing: {missing[:5]}")
    manifest.created_at = manifest.created_at or _dt.datetime.now(_dt.timezone.utc).isoformat()
    return store.write_json(f"{prefix}/{MANIFEST_NAME}", asdict(manifest))


def read_manifest(store: ArtifactStore, prefix: str) -> StageManifest | None:
    key = f"{prefix}/{MANIFEST_NAME}"
    if not store.exists(key):
        return None
    raw = store.read_json(key)
    if raw.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{store.uri(key)}: manifest version {raw.get('version')!r}, expected {MANIFEST_VERSION}")
    return StageManifest(**raw)


def completed(store: ArtifactStore, prefix: str, config: dict, inputs: dict[str, str]) -> StageManifest | None:
    """The existing manifest if this exact stage (same config and input hashes) already finished."""
    m = read_manifest(store, prefix)
    if m and m.config_hash == hash_config(config) and m.inputs == inputs:
        return m
    return None
