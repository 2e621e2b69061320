"""Checks shared by the stage parameter models: no credentials in any string, safe artifact names
and prefixes (hddm_core.pipeline.params re-exports them)."""
from __future__ import annotations

import posixpath
import re

from hddm_core.redact import has_url_credentials, mask_secrets

# Untrusted input (the Prefect UI form, a JSON file) must not carry Infinity/NaN into any number, and
# a refused value is never echoed by pydantic's message (it may be a credential).
SAFE_CONFIG = dict(allow_inf_nan=False, hide_input_in_errors=True)


def refuse_credentials(data, where: str = ""):
    """data unchanged, or ValueError naming the first string (at any depth) holding user:secret@ in a URL."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        path = f"{where}.{key}" if where else str(key)
        if key == "artifact_root" and isinstance(value, str) and "@" in value:
            raise ValueError(f"{path} '***@{value.rsplit('@', 1)[1]}' must not contain '@' (credentials come from "
                             "the environment: AWS_ACCESS_KEY_ID, ...)")
        if isinstance(value, str) and has_url_credentials(value):
            raise ValueError(f"{path} {mask_secrets(value)!r} embeds credentials (user:secret@): pass them through "
                             "the environment (AWS_ACCESS_KEY_ID, ...) instead")
        if isinstance(value, (dict, list, tuple)):
            refuse_credentials(value, path)
    return data


_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_KEY_PART = re.compile(rf"^{_SEGMENT}$")
# The same rules as JSON Schema patterns (ECMA-262), so Prefect refuses a bad name or prefix before a run exists.
KEY_NAME_PATTERN = rf"^(?!.*\.\.){_SEGMENT}$"
PREFIX_PATTERN = rf"^(?!.*\.\.){_SEGMENT}(/{_SEGMENT})*$"


def check_key_name(value: str, what: str = "name") -> str:
    """A single safe path segment: letters, digits, '.', '_', '-'; never '..', '/', '\\' or a scheme."""
    if not isinstance(value, str) or not _KEY_PART.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not a safe artifact name: use 1-128 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit, without '..', '/', '\\' or a scheme")
    return value


def check_prefix(value: str, what: str = "prefix") -> str:
    """A relative '/'-separated key prefix made of safe segments."""
    if not isinstance(value, str) or not value or value != posixpath.normpath(value) or value.startswith("/"):
        raise ValueError(f"{what} {value!r} must be a relative '/'-separated path without '.', '..' or empty parts")
    for part in value.split("/"):
        check_key_name(part, what)
    return value
