"""The process environment every HDDM entry point sets before Prefect or a hub library is imported
(`hddmp`, the demo, the test suite, the local stack's server and workers). A value the user has set wins.

Why each one (docs/stack-notes.md): no telemetry, no hub look-ups (the weights the pipeline runs offline
are installed with the package), and a Prefect ephemeral API that may take minutes to answer on a loaded
2-core machine: Prefect's default (20 s) made `make demo` fail under load 4-8, where 300 s passed.
"""
from __future__ import annotations

import os
from typing import MutableMapping, Optional

EPHEMERAL_STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    EPHEMERAL_STARTUP_TIMEOUT: "300",
}


def apply_defaults(environ: Optional[MutableMapping[str, str]] = None, **extra: str) -> MutableMapping[str, str]:
    """Set DEFAULTS (and `extra`) where unset in `environ` (default: os.environ); returns `environ`."""
    environ = os.environ if environ is None else environ
    for key, value in {**DEFAULTS, **extra}.items():
        environ.setdefault(key, value)
    return environ


def ephemeral_startup_timeout(environ: Optional[MutableMapping[str, str]] = None) -> float:
    """Seconds to wait for a Prefect API to answer: the user's setting, else ours (not Prefect's 20 s)."""
    environ = os.environ if environ is None else environ
    raw = environ.get(EPHEMERAL_STARTUP_TIMEOUT) or DEFAULTS[EPHEMERAL_STARTUP_TIMEOUT]
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{EPHEMERAL_STARTUP_TIMEOUT}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{EPHEMERAL_STARTUP_TIMEOUT}={raw!r} must be a positive number of seconds")
    return value
