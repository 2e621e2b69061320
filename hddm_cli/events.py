"""Announcing a landed expert from the command line (`hddmp expert register`, `hddmp expert submit`).

The event is the register-expert flow's own, sent through the same emitter (hddm_tasks.events): the same
weights always give the same event id, so a repeated landing is one event to Prefect. With no Prefect API
configured nothing is sent, and the message says so plainly.
"""
from __future__ import annotations

import os
from typing import Optional


def announce(*, expert_uri: str, weights_sha256: str, prefix: str, cluster_id: Optional[int], objective: Optional[str],
             evaluate_hint: str, artifact_root: Optional[str] = None) -> str:
    """Send hddm.expert.landed when a Prefect API is configured; a line saying what happened (and, for an
    expert already evaluated, that nothing is evaluated again)."""
    if not os.environ.get("PREFECT_API_URL"):
        return ("no event sent: no Prefect API is configured (PREFECT_API_URL is unset), so no evaluation was "
                f"triggered; the expert is stored at {expert_uri}. {evaluate_hint}")
    from hddm_tasks.events import EXPERT_LANDED_EVENT, send_landed
    from hddm_tasks.once import landed_evaluation_report

    api_url = os.environ["PREFECT_API_URL"]
    try:  # delivered before the command exits, or said plainly that it was not
        event_id = send_landed(api_url, expert_uri=expert_uri, weights_sha256=weights_sha256, prefix=prefix,
                               cluster_id=cluster_id, objective=objective)
    except Exception as exc:  # noqa: BLE001 - the expert is stored either way; the message names the failure
        return (f"no event sent: {EXPERT_LANDED_EVENT} could not be delivered to {api_url} "
                f"({type(exc).__name__}: {exc}), so no evaluation was triggered; the expert is stored at "
                f"{expert_uri}. {evaluate_hint}")
    sent = f"sent {EXPERT_LANDED_EVENT} (event {event_id}) to {api_url}"
    report = landed_evaluation_report(artifact_root, expert_uri)
    if report is not None:
        return (f"{sent}; this expert was already evaluated ({report}): nothing is evaluated again (a triggered "
                "run finds that record and finishes at once)")
    return (f"{sent}: the evaluate deployment's trigger, where it is deployed on that server, evaluates it once "
            "(a repeated landing finds the evaluation's record and is not evaluated again)")


def announce_landing(result: dict, *, run_url: str, experts_prefix: str) -> str:
    """For `hddmp expert submit` (result: hddm_core.contrib.submit_expert's)."""
    return announce(expert_uri=result["uri"], weights_sha256=result["weights_sha256"], prefix=result["key"],
                    cluster_id=result["cluster_id"], objective=result["objective"], artifact_root=run_url,
                    evaluate_hint=f"The run's operator can evaluate it with `hddmp evaluate --artifact-root {run_url} "
                                  f"--experts-prefix {experts_prefix}`")


def announce_registered(ref, *, artifact_root: Optional[str]) -> str:
    """For `hddmp expert register` run in-process (ref: hddm_core.pipeline.stages.run_register_expert's)."""
    root = f" --artifact-root {artifact_root}" if artifact_root else ""
    return announce(expert_uri=ref.uri, weights_sha256=ref.content_hash, prefix=ref.prefix,
                    cluster_id=ref.extra.get("cluster_id"), objective=ref.extra.get("objective"),
                    artifact_root=artifact_root,
                    evaluate_hint=f"Evaluate it with `hddmp evaluate{root} --experts {ref.uri}`")
