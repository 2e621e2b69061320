"""Checks of an artifact root before any work (hddm_core.storage.check_root): one-line reasons for
the environment errors that used to end in tracebacks (a root that is a file, an unwritable folder,
S3 without credentials, an endpoint that does not answer). Nothing is created or written."""
from __future__ import annotations

import os

from hddm_core.redact import has_url_credentials, mask_secrets


def check_local_root(base: str) -> None:
    """A local root must be a folder, or creatable in a writable folder (checked, nothing created)."""
    path = os.path.abspath(base)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"artifact root {path} is a file, not a folder: choose a folder path")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"artifact root {path} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"artifact root {path} is not writable (no write permission on {probe})")



def check_root(root: str | None = None, storage_options: dict | None = None, timeout_s: float = 5.0) -> str:
    """Why root (or $HDDM_ARTIFACT_ROOT, or ./artifacts) cannot be used, as a ValueError; writes nothing.

    Local: not a file, creatable, writable. s3://: no credentials embedded in the URL, credentials
    available (storage_options, environment, ~/.aws, or an instance role), and the endpoint answers
    within timeout_s. Returns the root, masked for messages."""
    root = root or os.environ.get("HDDM_ARTIFACT_ROOT") or os.path.abspath("artifacts")
    shown = mask_secrets(root)
    if has_url_credentials(root) or "@" in root.partition("://")[2].split("/", 1)[0]:
        raise ValueError(f"artifact root {shown!r} embeds credentials: pass them through the environment "
                         "(AWS_ACCESS_KEY_ID, ...) or storage_options instead")
    if "://" not in root or root.startswith("file://"):
        check_local_root(root.removeprefix("file://"))
        return shown
    if not root.startswith("s3://"):
        return shown
    from hddm_core.storage import _s3_options_from_env

    options = {**_s3_options_from_env(), **(storage_options or {})}
    if not options.get("anon") and not options.get("key"):
        import botocore.session

        if botocore.session.get_session().get_credentials() is None:
            raise ValueError(f"artifact root {shown}: no S3 credentials found: set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / ~/.aws/credentials)")
    import s3fs

    config = {"connect_timeout": timeout_s, "read_timeout": timeout_s, "retries": {"max_attempts": 1}}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, config_kwargs=config,
                           **{k: v for k, v in options.items() if k != "config_kwargs"})
    bucket = root[len("s3://"):].split("/", 1)[0]
    endpoint = (options.get("client_kwargs") or {}).get("endpoint_url") or "AWS S3"
    try:
        fs.ls(bucket, detail=False)
    except FileNotFoundError:
        raise ValueError(f"artifact root {shown}: bucket {bucket!r} does not exist at {mask_secrets(endpoint)}") from None
    except PermissionError as exc:
        raise ValueError(f"artifact root {shown}: access denied ({mask_secrets(type(exc).__name__)}); "
                         "check the credentials") from None
    except Exception as exc:  # noqa: BLE001 (connection refused, DNS, timeout, TLS: one line each)
        raise ValueError(f"artifact root {shown}: endpoint {mask_secrets(endpoint)} unreachable "
                         f"({mask_secrets(' '.join(str(exc).split()))[:300]})") from None
    return shown
