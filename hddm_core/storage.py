"""The artifact store: one root URL over fsspec (a local folder by default, s3://bucket/prefix at
scale through s3fs). Keys are '/'-separated paths under the root.

Writes never publish a partial object under its final key: data goes to a temporary sibling key
and is moved into place only after it was written completely (os.replace locally; a server-side
copy on S3, which makes the final object appear whole or not at all). An exception while writing
removes the temporary key and leaves whatever was under the final key before untouched.
S3 endpoint and credentials come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)
or storage_options; they are never logged (repr shows the root only; storage_options secrets are
registered with hddm_core.redact so no log line or message carries them).

Reads are bounded: only regular files are read (a key that is a FIFO, a device such as /dev/zero, a
folder or a symlink to one is refused before a byte is read), and every read has a size cap
(read_bytes: max_bytes, default DEFAULT_MAX_READ; read_json: MAX_JSON_BYTES, and it refuses NaN,
Infinity and integers outside int64, which no manifest holds). A writer killed mid-write leaves a
'<name>.tmp-<12 hex>' sibling; the next write of the same key removes those older than
STALE_TMP_AGE_S, and `sweep_temporaries` removes them under a prefix. `check_root` says, before
any work, why a root cannot be used (a file, not writable, no S3 credentials, endpoint unreachable).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import logging
import math
import os
import posixpath
import re
import shutil
import stat
import tempfile
import time
import uuid
from typing import Any, Iterator

import fsspec

from hddm_core.redact import has_url_credentials, mask_secrets, register_secret
from hddm_core.storage_checks import check_local_root, check_root  # noqa: F401 (check_root: public here)

log = logging.getLogger(__name__)
TMP_MARK = ".tmp-"
_TMP_NAME = re.compile(r"^(?P<name>.+)" + re.escape(TMP_MARK) + r"[0-9a-f]{12}$")
STALE_TMP_AGE_S = 3600.0  # an in-flight write older than this is a killed writer's leftover
DEFAULT_MAX_READ = 16 << 30  # 16 GiB: the largest checkpoint (XL/2 fp32 is ~2.7 GB) with room
MAX_JSON_BYTES = 64 << 20  # manifests, cards, markers and stats are kilobytes to a few megabytes
_INT64 = 1 << 63


def validate_key(key: str) -> str:
    """Reject keys that could escape the root or alias another key."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"artifact key must be a non-empty string, got {key!r}")
    parts = key.split("/")
    bad = [p for p in parts if p in ("", ".", "..")]
    if key.startswith("/") or "\\" in key or bad or "\x00" in key or "://" in key:
        raise ValueError(f"invalid artifact key {key!r}: use relative '/'-separated names without '..', "
                         "'.', empty segments, backslashes or a scheme")
    if any(TMP_MARK in p for p in parts):
        raise ValueError(f"invalid artifact key {key!r}: '{TMP_MARK}' is reserved for in-flight writes")
    return key


def _s3_options_from_env() -> dict:
    opts: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("HDDM_S3_ENDPOINT_URL")
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


def redact_url(url: str) -> str:
    """url without any user:password@ part or other credential (hddm_core.redact.mask_secrets)."""
    return mask_secrets(url)


def _strict_constant(name: str):
    raise ValueError(f"JSON holds {name}, which no manifest may contain")


def _strict_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"JSON number {text[:40]} overflows a float")
    return value


def _strict_int(text: str) -> int:
    if len(text) > 20 or not -_INT64 <= int(text) < _INT64:
        raise ValueError(f"JSON integer {text[:40]} is outside int64")
    return int(text)


def loads_strict(data: bytes | str):
    """json.loads refusing NaN, Infinity, float overflow (1e999) and integers outside int64."""
    return json.loads(data, parse_constant=_strict_constant, parse_float=_strict_float, parse_int=_strict_int)


class ArtifactStore:
    def __init__(self, root: str, storage_options: dict | None = None):
        if not root or not isinstance(root, str):
            raise ValueError(f"artifact root must be a local path or a URL such as s3://bucket/prefix, got {root!r}")
        if has_url_credentials(root) or "@" in root.partition("://")[2].split("/", 1)[0]:
            raise ValueError(f"artifact root {redact_url(root)!r} embeds credentials: pass them through the "
                             "environment (AWS_ACCESS_KEY_ID, ...) or storage_options instead")
        self.root = root.rstrip("/")
        options = dict(storage_options or {})
        if self.root.startswith("s3://"):
            options = {**_s3_options_from_env(), **options}
        self.storage_options = options  # may hold credentials: never logged, never in repr
        for name in ("key", "secret", "token"):
            register_secret(options.get(name))
        self.fs, base = fsspec.core.url_to_fs(self.root, **options)
        self.base = base.rstrip("/")
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.is_local:
            check_local_root(self.base)
            os.makedirs(self.base, exist_ok=True)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"

    # -- naming ----------------------------------------------------------------------------
    def path(self, key: str) -> str:
        return posixpath.join(self.base, validate_key(key))

    def uri(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}"

    def child(self, prefix: str) -> "ArtifactStore":
        """A store rooted at root/prefix, sharing this one's filesystem."""
        sub = ArtifactStore.__new__(ArtifactStore)
        sub.root, sub.fs, sub.is_local = self.uri(prefix), self.fs, self.is_local
        sub.storage_options = self.storage_options
        sub.base = self.path(prefix)
        if sub.is_local:
            os.makedirs(sub.base, exist_ok=True)
        return sub

    # -- reads -----------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        self._refresh()
        return self.fs.exists(self.path(key))

    def read_bytes(self, key: str, max_bytes: int = DEFAULT_MAX_READ) -> bytes:
        """The object's bytes; refused when it is not a regular file or holds more than max_bytes."""
        path = self.path(key)
        if self.is_local:
            return _read_regular_file(path, self.uri(key), max_bytes)
        self._refresh(path)  # a cached size from before another writer would truncate the read
        size = int(self.fs.size(path))
        if size > max_bytes:
            raise ValueError(f"{self.uri(key)} is {size} bytes, over the {max_bytes}-byte limit of this read")
        with self.fs.open(path, "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ValueError(f"{self.uri(key)} grew past the {max_bytes}-byte limit of this read")
        return data

    def read_json(self, key: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
        """The parsed JSON object, at most max_bytes; NaN, Infinity and out-of-int64 numbers refused."""
        raw = self.read_bytes(key, max_bytes)
        try:
            return loads_strict(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"{self.uri(key)} is not valid JSON: {exc}") from None

    def list(self, prefix: str = "") -> list[str]:
        """Committed keys under prefix (recursive), relative to the root; in-flight temps hidden."""
        self._refresh()
        start = self.path(prefix) if prefix else self.base
        if not self.fs.exists(start):
            return []
        found = self.fs.find(start)
        keys = [posixpath.relpath(p, self.base) for p in found]
        return sorted(k for k in keys if TMP_MARK not in k)

    def size(self, key: str) -> int:
        self._refresh(self.path(key))
        return int(self.fs.size(self.path(key)))

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[str]:
        """A local file path for key (the file itself when local, a temporary download otherwise)."""
        if self.is_local:
            yield self.path(key)
            return
        with tempfile.TemporaryDirectory(prefix="hddm-dl-") as tmp:
            dest = os.path.join(tmp, posixpath.basename(key))
            self._refresh(self.path(key))
            self.fs.get(self.path(key), dest)
            yield dest

    # -- atomic writes ---------------------------------------------------------------------
    def _tmp_key(self, key: str) -> str:
        head, tail = posixpath.split(key)
        return posixpath.join(head, f"{tail}{TMP_MARK}{uuid.uuid4().hex[:12]}")

    def _commit(self, tmp_path: str, final_path: str) -> None:
        if self.is_local:
            os.replace(tmp_path, final_path)  # atomic rename on one filesystem
        else:
            self.fs.copy(tmp_path, final_path)  # server-side copy: the object appears whole
            self.fs.rm(tmp_path)
        self._refresh()

    def _refresh(self, path: str | None = None) -> None:
        invalidate = getattr(self.fs, "invalidate_cache", None)
        if invalidate is not None and not self.is_local:
            # s3fs caches listings per filesystem instance, and fsspec shares one instance between
            # stores with the same options: another writer's objects would stay invisible (or a
            # deleted one visible) without this.
            invalidate(path) if path else invalidate()

    def _tmp_age_s(self, path: str) -> float:
        if self.is_local:
            return time.time() - os.lstat(path).st_mtime
        modified = self.fs.modified(path)
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=_dt.timezone.utc)
        return (_dt.datetime.now(_dt.timezone.utc) - modified).total_seconds()

    def sweep_temporaries(self, prefix: str = "", older_than_s: float = STALE_TMP_AGE_S,
                          only_for: str | None = None) -> list[str]:
        """Remove this store's own in-flight temporaries ('<name>.tmp-<12 hex>') older than older_than_s
        under prefix (only those of key only_for when given); returns the removed paths."""
        if older_than_s < 0 or not math.isfinite(older_than_s):
            raise ValueError(f"older_than_s must be a finite number >= 0, got {older_than_s!r}")
        self._refresh()
        if only_for is not None:  # one key: a cheap listing of its own temporaries only
            final = self.path(only_for)
            folder, wanted = posixpath.dirname(final), posixpath.basename(final)
            if self.is_local:
                names = os.listdir(folder) if os.path.isdir(folder) else []
                candidates = [posixpath.join(folder, n) for n in names if n.startswith(wanted + TMP_MARK)]
            else:
                candidates = self.fs.find(folder, maxdepth=1, prefix=wanted + TMP_MARK)
        else:
            start = self.path(prefix) if prefix else self.base
            candidates = self.fs.find(start) if self.fs.exists(start) else []
        removed = []
        for path in candidates:
            match = _TMP_NAME.match(posixpath.basename(path))
            if not match or (only_for is not None and match["name"] != wanted):
                continue
            with contextlib.suppress(FileNotFoundError):  # another sweeper got there first
                if self._tmp_age_s(path) >= older_than_s:
                    self.fs.rm(path)
                    removed.append(path)
        if removed:
            log.info("removed %d stale temporaries (killed writes) under %s", len(removed), self.root)
            self._refresh()
        return removed

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[io.BufferedWriter]:
        final = self.path(key)
        with contextlib.suppress(Exception):  # best effort: a failed sweep never blocks a write
            self.sweep_temporaries(only_for=key)
        tmp = posixpath.join(posixpath.dirname(final), posixpath.basename(self._tmp_key(key)))
        if self.is_local:
            os.makedirs(posixpath.dirname(final), exist_ok=True)
        f = None
        try:
            f = self.fs.open(tmp, "wb")
            yield f
            if self.is_local:
                f.flush()
                os.fsync(f.fileno())
            f.close()  # on S3: the last part and CompleteMultipartUpload (or one PUT) of the temp key
            self._commit(tmp, final)
        except BaseException:
            if f is not None and not f.closed:
                # s3fs: abort the multipart upload instead of closing (closing would commit the
                # partial temp object); local: just close the handle.
                discard = getattr(f, "discard", None)
                with contextlib.suppress(Exception):
                    discard() if discard is not None and not self.is_local else f.close()
                with contextlib.suppress(AttributeError):  # local file objects: closed is read-only (and True)
                    f.closed = True  # a discarded s3fs file must not try to flush again when collected
            with contextlib.suppress(Exception):
                self._refresh(tmp)
                if self.fs.exists(tmp):
                    self.fs.rm(tmp)
            raise

    def write_bytes(self, key: str, data: bytes) -> str:
        with self.open_write(key) as f:
            f.write(data)
        return self.uri(key)

    def write_json(self, key: str, obj: Any) -> str:
        return self.write_bytes(key, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def put_file(self, local_path: str, key: str) -> str:
        with open(local_path, "rb") as src, self.open_write(key) as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)
        return self.uri(key)

    def delete(self, key: str) -> None:
        p = self.path(key)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)
        self._refresh()


def _read_regular_file(path: str, uri: str, max_bytes: int) -> bytes:
    """Read a local file only if it is a regular file (checked on the opened descriptor, so no swap
    between check and read) of at most max_bytes; FIFOs never block (opened non-blocking)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError:
        raise ValueError(f"{uri} is a folder, not a file") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
        os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{uri} is not a regular file (a device, FIFO, socket or folder): refused")
        raise ValueError(f"{uri} is {st.st_size} bytes, over the {max_bytes}-byte limit of this read")
    with os.fdopen(fd, "rb", buffering=0) as f:
        chunks, total = [], 0
        while chunk := f.read(min(8 << 20, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise ValueError(f"{uri} grew past the {max_bytes}-byte limit of this read")
        return b"".join(chunks)


def open_store(root: str | None = None, storage_options: dict | None = None) -> ArtifactStore:
    """The store for root, or HDDM_ARTIFACT_ROOT, or ./artifacts (the embedded default)."""
    return ArtifactStore(root or os.environ.get("HDDM_ARTIFACT_ROOT") or os.path.abspath("artifacts"),
                         storage_options)
