"""What every task shares: content-addressed cache keys, transient-only retries, artifacts."""
from __future__ import annotations

import errno
import logging
import re
from typing import Callable, Optional

from prefect.artifacts import (create_link_artifact, create_markdown_artifact, create_progress_artifact,
                               update_progress_artifact)

from hddm_core.pipeline import stages

TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE, errno.EHOSTUNREACH,
                    errno.ENETUNREACH, errno.EAGAIN}
TRANSIENT_NAMES = {"ConnectionError", "ConnectTimeout", "ReadTimeout", "ReadTimeoutError", "EndpointConnectionError",
                   "ConnectionClosedError", "ServerDisconnectedError", "ClientConnectorError", "SlowDown",
                   "ServiceUnavailable", "ThrottlingException"}
RETRY_DELAYS = [10, 60, 300]  # backoff between the (at most 3) retries of a transient failure


def is_transient(exc: BaseException | None) -> bool:
    """Network/storage hiccups are worth a retry; bad input, bad weights and bugs are not."""
    while exc is not None:
        if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__name__ in TRANSIENT_NAMES:
            return True
        if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retry_transient(task, task_run, state) -> bool:
    """retry_condition_fn: continue to the retry policy only for transient errors."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:  # the task's own exception
        return is_transient(exc)
    return False


def cache_key(stage: str):
    """cache_key_fn: artifact root + stage config + input content hashes, never run ids; only once the
    store holds the finished result under that key (hddm_core.pipeline.stages.reusable_key), so a cached
    result never points at outputs that are gone. `force` refreshes (refresh_cache)."""

    def key_fn(context, parameters) -> Optional[str]:
        params = parameters["params"]
        key = stages.reusable_key(stage, params)
        return None if key is None else f"hddm-{stage}-{key}"

    return key_fn


def artifact_key(*parts) -> str:
    """Artifact keys: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")[:100]


def result_key(name: str, ref) -> str:
    """An artifact key per result (the stage's key, or its output folder's name): runs with other inputs
    get their own card in the UI, and the same result's runs share one card's history."""
    return artifact_key(name, (ref.key or ref.prefix.rsplit("/", 1)[-1])[:16])


log = logging.getLogger(__name__)


def summary_card(build: Callable[[], str], key: str, description: str) -> None:
    """A markdown artifact from a hddm_core.pipeline.stage_cards builder (key numbers, pictures inline).
    The stage has finished when this runs: a card that cannot be built says why instead of failing it."""
    try:
        markdown = build()
    except Exception as exc:
        log.warning("summary card %s could not be built: %s", key, exc)
        markdown = f"The summary of this result could not be built: {type(exc).__name__}: {exc}"
    create_markdown_artifact(markdown, key=key, description=description)


def browsable_link(url: str, link_text: str, key: str) -> None:
    """A link artifact only where a browser can open it (an http(s) store); a file:// or s3:// link
    opens nothing from the UI, and the summary card already names where the object is."""
    if url.startswith(("http://", "https://")):
        create_link_artifact(url, link_text=link_text, key=key)


class Progress:
    """A Prefect progress artifact fed by a stage's (done, total) callback."""

    def __init__(self, key: str, description: str):
        self.description = description
        self.id = create_progress_artifact(0.0, key=artifact_key(key), description=description)

    def __call__(self, done: int, total: int) -> None:
        update_progress_artifact(self.id, 100.0 * done / max(total, 1), description=f"{self.description}: {done}/{total}")
