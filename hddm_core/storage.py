"""The artifact store: one root URL over fsspec (a local folder by default, s3://bucket/prefix at
scale through s3fs). Keys are '/'-separated paths under the root.

Writes never publish a partial object under its final key: data goes to a temporary sibling key
and is moved into place only after it was written completely (os.replace locally; a server-side
copy on S3, which makes the final object appear whole or not at all). An exception while writing
removes the temporary key and leaves whatever was under the final key before untouched.
S3 endpoint and credentials come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)
or storage_options; they are never logged (repr shows the root only).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from typing import Any, Iterator

import fsspec

log = logging.getLogger(__name__)
TMP_MARK = ".tmp-"


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
    """url without any user:password@ part (credentials never reach repr or logs)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


class ArtifactStore:
    def __init__(self, root: str, storage_options: dict | None = None):
        if not root or not isinstance(root, str):
            raise ValueError(f"artifact root must be a local path or a URL such as s3://bucket/prefix, got {root!r}")
        if "@" in root.partition("://")[2].split("/", 1)[0]:
            raise ValueError(f"artifact root {redact_url(root)!r} embeds credentials: pass them through the "
                             "environment (AWS_ACCESS_KEY_ID, ...) or storage_options instead")
        self.root = root.rstrip("/")
        options = dict(storage_options or {})
        if self.root.startswith("s3://"):
            options = {**_s3_options_from_env(), **options}
        self.storage_options = options  # may hold credentials: never logged, never in repr
        self.fs, base = fsspec.core.url_to_fs(self.root, **options)
        self.base = base.rstrip("/")
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.is_local:
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

    def read_bytes(self, key: str) -> bytes:
        self._refresh(self.path(key))  # a cached size from before another writer would truncate the read
        with self.fs.open(self.path(key), "rb") as f:
            return f.read()

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key).decode("utf-8"))

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

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[io.BufferedWriter]:
        final = self.path(key)
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


def open_store(root: str | None = None, storage_options: dict | None = None) -> ArtifactStore:
    """The store for root, or HDDM_ARTIFACT_ROOT, or ./artifacts (the embedded default)."""
    return ArtifactStore(root or os.environ.get("HDDM_ARTIFACT_ROOT") or os.path.abspath("artifacts"),
                         storage_options)
