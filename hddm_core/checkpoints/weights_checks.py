"""The checks on a weights file, in order, each reading at most what it needs and none building a model early.

size (against the manifest and the limit, before a byte is read) -> only a regular file is opened ->
the safetensors header (hddm_core.checkpoints.header; on a rejection the bytes are tested for a
pickle's structure, pickle_guard) -> dtypes -> the data section against the size the config implies,
computed arithmetically (limits.stored_elements) -> shapes (the model built on the meta device, now
known to be small) -> sha256 (reads capped at the file's size, the deadline checked every block).
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import stat
import time
from typing import BinaryIO

import torch

from hddm_core.checkpoints.errors import Check, PickleRefused
from hddm_core.checkpoints.header import HeaderRejected, header_length, parse_header
from hddm_core.checkpoints.limits import stored_elements
from hddm_core.checkpoints.manifest import ALLOWED_DTYPES, DTYPE_NAMES, Kind
from hddm_core.checkpoints.pickle_guard import MAX_PICKLE_SCAN, refuse_pickle_bytes
from hddm_core.storage import ArtifactStore

BLOCK = 8 << 20


class OverBudget(Exception):
    """The validation's wall-clock budget ran out (at the step named)."""


class Deadline:
    def __init__(self, seconds: float):
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def check(self, step: str) -> None:
        if time.monotonic() > self.end:
            raise OverBudget(step)


class CappedReader:
    """A file object that returns at most `limit` bytes and checks the deadline on every read."""

    def __init__(self, f: BinaryIO, limit: int, deadline: Deadline | None):
        self.f, self.left, self.deadline = f, limit, deadline

    def read(self, n: int = -1) -> bytes:
        if self.deadline is not None:
            self.deadline.check("sha256")
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(n) if n else b""
        self.left -= len(data)
        return data


def weights_sha256(f: BinaryIO) -> str:
    """sha256 hex digest of a weights file object, read in 8 MiB blocks (the one place weights are hashed)."""
    h = hashlib.sha256()
    while block := f.read(BLOCK):
        h.update(block)
    return h.hexdigest()


def open_weights(store: ArtifactStore, key: str, data: bytes | None) -> BinaryIO:
    """The weights as a file object: the bytes already read, or the file if it is a regular one (local:
    checked on the opened descriptor, opened non-blocking so a FIFO never blocks); ValueError otherwise."""
    if data is not None:
        return io.BytesIO(data)
    if not store.is_local:
        return store.fs.open(store.path(key), "rb")
    fd = os.open(store.path(key), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{store.uri(key)} is not a regular file (a device, FIFO, socket or folder): refused")
    return os.fdopen(fd, "rb")


def read_header(f: BinaryIO, uri: str, size: int) -> dict:
    """The tensor entries of an open weights file; PickleRefused when its bytes are a pickle,
    HeaderRejected (with a code) for any other malformed header. Reads at most 8 + n bytes
    (MAX_PICKLE_SCAN when testing for a pickle)."""
    head = f.read(8)
    try:
        n = header_length(head, size)
        return parse_header(head + f.read(n), size)
    except HeaderRejected:
        f.seek(0)
        refuse_pickle_bytes(f.read(min(size, MAX_PICKLE_SCAN)), uri)
        raise


def _size_check(size: int, manifest, config, max_bytes: int) -> Check:
    detail = f"{size} bytes (manifest {manifest.weights_bytes}, limit {max_bytes})"
    if size > max_bytes:
        return Check("size", False, detail, "size-limit")
    itemsize = {name: dt.itemsize for dt, name in DTYPE_NAMES.items()}[manifest.dtype]  # schema-checked
    need = stored_elements(config) * itemsize  # by formula: nothing built or read yet
    if need > max_bytes:
        return Check("size", False, f"the config's {stored_elements(config)} {manifest.dtype} elements need {need} "
                                    f"bytes, over the limit {max_bytes}", "size-limit")
    return Check("size", size == manifest.weights_bytes, detail, "size-mismatch")


@functools.lru_cache(maxsize=16)  # configs are frozen; a registry validates the same few architectures
def _expected_shapes(kind: Kind, config) -> dict[str, tuple]:
    with torch.device("meta"):
        model = kind.build(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _shapes_check(header: dict, kind: Kind, config) -> Check:
    expected = _expected_shapes(kind, config)
    found = {k: tuple(v["shape"]) for k, v in header.items()}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [f"{k}: {found[k]} != {expected[k]}" for k in expected if k in found and found[k] != expected[k]]
    return Check("shapes", not (missing or unexpected or wrong),
                 f"{len(found)} tensors vs config" + (f"; missing {missing[:4]}" if missing else "")
                 + (f"; unexpected {unexpected[:4]}" if unexpected else "") + (f"; {wrong[:3]}" if wrong else ""))


def header_checks(header: dict, data_bytes: int, kind: Kind, config, manifest_dtype: str) -> list[Check]:
    """dtypes, the data size the config implies, then shapes; stops at the first failure."""
    dtypes = {v["dtype"] for v in header.values()}
    dtype_ok = dtypes <= set(ALLOWED_DTYPES) and {DTYPE_NAMES[ALLOWED_DTYPES[d]] for d in dtypes} == {manifest_dtype}
    checks = [Check("dtypes", dtype_ok, f"{sorted(dtypes)} (manifest {manifest_dtype})")]
    if not dtype_ok:
        return checks
    itemsize = ALLOWED_DTYPES[next(iter(dtypes))].itemsize if dtypes else 4
    want = stored_elements(config) * itemsize
    checks.append(Check("data-size", data_bytes == want, f"{data_bytes} data bytes; the config's "
                        f"{stored_elements(config)} elements x {itemsize} bytes need {want}", "size-vs-config"))
    if checks[-1].ok:
        checks.append(_shapes_check(header, kind, config))
    return checks


def weights_checks(store: ArtifactStore, manifest, kind: Kind, config, max_bytes: int, check_hash: bool,
                   data: bytes | None, deadline: Deadline) -> list[Check]:
    """Every check of the weights named by `manifest` (`data`: the bytes when already read)."""
    key = manifest.weights_file
    size = len(data) if data is not None else store.size(key)
    checks = [_size_check(size, manifest, config, max_bytes)]
    if not checks[0].ok:
        return checks
    try:
        with open_weights(store, key, data) as f:
            header = read_header(f, store.uri(key), size)
    except PickleRefused:
        raise
    except HeaderRejected as exc:
        return checks + [Check("safetensors-header", False, f"{store.uri(key)}: {exc}", exc.code)]
    except (OSError, ValueError) as exc:
        return checks + [Check("safetensors-header", False, str(exc), "weights-unreadable")]
    checks.append(Check("not-pickle", True, "safetensors: 8-byte length + JSON header"))
    deadline.check("header")
    data_bytes = max((v["data_offsets"][1] for v in header.values()), default=0)  # == size - 8 - n (checked)
    checks += header_checks(header, data_bytes, kind, config, manifest.dtype)
    if not all(c.ok for c in checks) or not check_hash:
        return checks
    deadline.check("shapes")
    with open_weights(store, key, data) as f:
        digest = weights_sha256(CappedReader(f, size, deadline))
    checks.append(Check("sha256", digest == manifest.weights_sha256, f"{digest[:16]}... (manifest "
                                                                       f"{manifest.weights_sha256[:16]}...)"))
    return checks
