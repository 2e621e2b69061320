"""One registration per expert name at a time: a lock object created only if it does not exist.

Two submissions under one name must not both succeed. Before comparing and publishing, a
registration creates `<experts>/<name>/registration.lock` with a conditional create:
  - local stores: os.open(O_CREAT | O_EXCL), atomic on every POSIX file system;
  - S3: PutObject with If-None-Match: * (s3fs `pipe_file(mode="create")`, botocore >= 1.35.20; AWS S3,
    MinIO and moto honour it): the store answers 412 and s3fs raises FileExistsError;
  - any other fsspec store: a lease object written if absent and re-read after the write: the holder
    is whoever's owner id reads back (a window of one round trip remains; stated, not hidden).
The lock holds {owner, expires}; it is deleted when the registration ends. A lock left by a killed
registration stops blocking after its lease (LEASE_S); the next registration takes it over, again
re-reading the owner after its write. A loser raises NameBusy, one line naming the holder's lease.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import socket
import time
import uuid
from typing import Iterator

from hddm_core.storage import ArtifactStore

LOCK_NAME = "registration.lock"
LEASE_S = 600.0  # a registration (copy, validate, publish) of the largest expert takes well under this


class NameBusy(ValueError):
    """Another registration holds this expert name now."""


def _create_exclusive(store: ArtifactStore, key: str, body: bytes) -> str:
    """'atomic' when the store created the object only if absent; 'lease' when it can only re-read."""
    path = store.path(key)
    if store.is_local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        return "atomic"
    if "s3" in (store.fs.protocol if isinstance(store.fs.protocol, tuple) else (store.fs.protocol,)):
        store.fs.pipe_file(path, body, mode="create")  # If-None-Match: * ; FileExistsError on 412
        store.fs.invalidate_cache(path)
        return "atomic"
    store.fs.invalidate_cache(path)
    if store.fs.exists(path):
        raise FileExistsError(path)
    store.fs.pipe_file(path, body)
    return "lease"


def _holder(store: ArtifactStore, key: str) -> dict:
    try:
        held = store.read_json(key, max_bytes=4096)
        return held if isinstance(held, dict) else {}
    except (ValueError, OSError):  # gone meanwhile, or not ours to parse: treat as an unknown holder
        return {}


def _acquire(store: ArtifactStore, key: str, owner: str, lease_s: float) -> None:
    body = json.dumps({"owner": owner, "expires": time.time() + lease_s}).encode()
    try:
        how = _create_exclusive(store, key, body)
    except FileExistsError:
        held = _holder(store, key)
        expires = held.get("expires")
        if not isinstance(expires, (int, float)) or expires > time.time():
            raise NameBusy(f"another registration of {store.uri(posixpath.dirname(key))} is in progress (lease held "
                           f"by {str(held.get('owner', 'an unknown owner'))[:80]}); try again later or choose "
                           "another name") from None
        store.delete(key)  # a killed registration's lease: take it over, then make sure we hold it
        how = "lease"
        store.fs.pipe_file(store.path(key), body)
    if how == "lease" and _holder(store, key).get("owner") != owner:
        raise NameBusy(f"another registration of {store.uri(posixpath.dirname(key))} took the name first; "
                       "try again later or choose another name")


@contextlib.contextmanager
def name_lock(store: ArtifactStore, prefix: str, lease_s: float = LEASE_S) -> Iterator[str]:
    """Hold the registration lock of store/prefix (an expert's folder) for the block; NameBusy if held."""
    key = posixpath.join(prefix, LOCK_NAME)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    _acquire(store, key, owner, lease_s)
    try:
        yield owner
    finally:
        with contextlib.suppress(Exception):  # best effort: an expired lease is taken over anyway
            if _holder(store, key).get("owner") == owner:
                store.delete(key)
