"""Durable exactly-once evaluation: an idempotency record in the artifact store, claimed atomically.

Prefect's event-id deduplication lives in in-memory caches (minutes, one server process), so after a
server restart the same `hddm.expert.landed` event triggers the evaluate deployment again. This
record does not forget: before an evaluation runs, its flow run claims
`claims/evaluate/<key>/attempt-<n>.json` with an exclusive create (O_CREAT|O_EXCL on a local root;
a conditional put, If-None-Match: *, on S3), where key = hash(experts' weights sha256, router's,
prepared data's hash, evaluation config). Exactly one claimant of attempt n wins. When it finishes it
writes `done.json` with its StageRef; any later run for the same key, on any server, after any time,
finds done.json and finishes at once ("already evaluated", with the report's link). A run that finds
a claim of a live run (not in a final state) waits for its done.json; a claim whose run ended
without finishing it (Crashed, Failed, Cancelled, or unknown to this server) is taken over with
attempt n+1, claimed the same exclusive way. `force` evaluates again and records the new result.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

from hddm_core.manifests import hash_config, read_manifest
from hddm_core.pipeline.evaluation import expert_folders
from hddm_core.pipeline.stages import StageRef
from hddm_core.storage import ArtifactStore, open_store

log = logging.getLogger(__name__)
CLAIMS_PREFIX = "claims/evaluate"
DONE_NAME = "done.json"
_ATTEMPT = re.compile(r"^attempt-(\d{4,})\.json$")
WAIT_POLL_S = 10.0
# where and how fast an evaluation runs does not change what it measures: not part of the key
EXECUTION_FIELDS = {"artifact_root", "force", "experts", "router", "device", "batch_size"}


def create_exclusive(store: ArtifactStore, key: str, data: bytes) -> bool:
    """Write `key` only if no object exists there; True when this call created it. Atomic on a local
    filesystem (O_CREAT|O_EXCL) and on S3 (PutObject with If-None-Match: *)."""
    path = store.path(key)
    if store.is_local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True
    try:
        store.fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    except OSError as exc:  # s3fs maps 412 PreconditionFailed to an OSError subclass on some versions
        if "PreconditionFailed" in str(exc) or "412" in str(exc):
            return False
        raise
    store._refresh(path)
    return True


def _sha_of(folder: str, manifest: str) -> str:
    sha = open_store(folder).read_json(manifest).get("weights_sha256")
    if not sha:
        raise ValueError(f"{folder}/{manifest} has no weights_sha256: not a stored checkpoint")
    return sha


def claim_key(params) -> str:
    """hash(experts' weights, router's weights, prepared data, evaluation config) from the manifests
    alone (no weights are loaded)."""
    store = open_store(params.artifact_root)
    prep = read_manifest(store, params.prepare_prefix)
    inputs = {"experts": sorted(_sha_of(f, "expert.json") for f in expert_folders(store, params)),
              "router": _sha_of(params.router, "router.json") if params.router else "",
              "data": prep.content_hash if prep is not None else ""}
    return hash_config({"config": params.model_dump(mode="json", exclude=EXECUTION_FIELDS), "inputs": inputs})[:32]


@dataclass
class Outcome:
    """`ref` set: already evaluated (by `by`); else this run holds attempt `attempt` and must evaluate."""
    ref: Optional[StageRef] = None
    by: str = ""
    attempt: int = 0


class EvaluationClaim:
    def __init__(self, store: ArtifactStore, key: str, run_id: str,
                 run_state: Callable[[str], Optional[str]], poll_s: float = WAIT_POLL_S):
        """run_state(run_id): that flow run's state type ('RUNNING', 'CRASHED', ...), None when unknown."""
        self.store, self.prefix, self.run_id = store, f"{CLAIMS_PREFIX}/{key}", run_id
        self.run_state, self.poll_s = run_state, poll_s

    def _latest(self) -> tuple[int, Optional[dict]]:
        attempts = sorted(int(m.group(1)) for k in self.store.list(self.prefix)
                          if (m := _ATTEMPT.match(k.rsplit("/", 1)[-1])))
        if not attempts:
            return 0, None
        n = attempts[-1]
        return n, self.store.read_json(f"{self.prefix}/attempt-{n:04d}.json")

    def done(self) -> Optional[tuple[StageRef, str]]:
        """(ref, run id) of the finished evaluation, if its outputs are still there."""
        key = f"{self.prefix}/{DONE_NAME}"
        if not self.store.exists(key):
            return None
        record = self.store.read_json(key)
        ref = StageRef.model_validate(record["ref"])
        if not self.store.exists(f"{ref.prefix}/_manifest.json"):  # outputs deleted: evaluate again
            return None
        return ref.model_copy(update={"reused": True}), record.get("flow_run_id", "")

    def acquire(self, force: bool = False) -> Outcome:
        """Finish (already done), wait for a live claimant, or claim the next attempt for this run."""
        while True:
            if not force and (done := self.done()) is not None:
                return Outcome(ref=done[0], by=done[1])
            n, holder = self._latest()
            if holder is not None and holder.get("flow_run_id") == self.run_id:
                return Outcome(attempt=n)  # this run claimed it before (a rescheduled or retried run)
            if holder is not None and not force:
                state = self.run_state(holder.get("flow_run_id", ""))
                if state is not None and state not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    log.info("evaluation %s is being run by flow run %s (%s): waiting for it",
                             self.prefix, holder.get("flow_run_id"), state)
                    time.sleep(self.poll_s)
                    continue
            record = {"flow_run_id": self.run_id, "claimed_at": datetime.now(timezone.utc).isoformat(),
                      "host": os.uname().nodename, "pid": os.getpid(), "previous": holder}
            if create_exclusive(self.store, f"{self.prefix}/attempt-{n + 1:04d}.json",
                                json.dumps(record, default=str).encode()):
                return Outcome(attempt=n + 1)
            # another run claimed attempt n+1 between our read and our create: look again

    def finish(self, ref: StageRef) -> None:
        self.store.write_json(f"{self.prefix}/{DONE_NAME}", {
            "flow_run_id": self.run_id, "finished_at": datetime.now(timezone.utc).isoformat(),
            "ref": ref.model_dump(mode="json")})


def landed_evaluation_report(artifact_root: Optional[str], expert_uri: str) -> Optional[str]:
    """The report of the evaluation the expert-landed trigger runs for `expert_uri` (the evaluate
    deployment's default parameters), if one finished; None when none did or it cannot be told."""
    from hddm_core.pipeline.params import EvaluateParams
    from hddm_core.pipeline.stages import for_landed_expert

    try:
        params = for_landed_expert(EvaluateParams(artifact_root=artifact_root or ""), expert_uri)
        claim = EvaluationClaim(open_store(params.artifact_root), claim_key(params), "", lambda _: None)
        done = claim.done()
    except Exception as exc:  # best effort, for a message: a store we cannot read says nothing
        log.debug("no evaluation record found for %s: %s", expert_uri, exc)
        return None
    return None if done is None else done[0].extra.get("report")
