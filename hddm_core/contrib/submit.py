"""Submitting a contributed expert: the pipeline's checks plus compatibility with the run, then storing it in the run."""
from __future__ import annotations

import posixpath
from typing import Callable

from hddm_core.contrib.compatibility import RunExpectations, expert_checks, vet_expert
from hddm_core.contrib.published_run import expectations, read_card
from hddm_core.storage import ArtifactStore


class ContributionRefused(ValueError):
    """Submission refused; .checks holds every check that was run."""

    def __init__(self, message: str, checks=None):
        super().__init__(message)
        self.checks = list(checks or [])


def check_contribution(expert_location: str, clustering_dir: str | None = None, *,
                       cluster_id: int | None = None):
    """(checks, manifest): the pipeline's checks, plus compatibility when a fetched clustering is given."""
    expected = expectations(clustering_dir) if clustering_dir else None
    return expert_checks(expert_location, expected, cluster_id=cluster_id)


def refusal_message(checks) -> str:
    """'refused: <the first failed check's detail>', compatibility first, naming how many more failed."""
    failed = [c for c in checks if not c.ok]
    compat = [c for c in failed if c.name.startswith("compatible:")]
    first = (compat or failed)[0]
    more = f" (and {len(failed) - 1} more failed check{'s' if len(failed) > 2 else ''}: " \
           f"{', '.join(c.name for c in failed if c is not first)})" if len(failed) > 1 else ""
    return f"refused: {first.detail}{more}"


def submit_expert(expert_location: str, clustering_dir: str, *, name: str, cluster_id: int | None = None,
                  run_url: str | None = None, storage_options: dict | None = None,
                  store_fn: Callable[[str, str, str], str] | None = None) -> dict:
    """Check the expert (pipeline checks + compatibility with the run), then store it under the run's
    experts prefix as <experts>/<name>. Raises ContributionRefused naming the first failed field.

    run_url defaults to the run the clustering was fetched from; storage_options (or the
    environment: AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...) carry the contributor's own credentials.
    Storing is the register-expert stage's code (hddm_core.contrib.registration.register_expert), given
    the checks already run so the expert is read, hashed and smoke-forwarded once; unless
    store_fn(expert_location, run_url, name) -> uri is given. A name already holding different
    weights is refused (nobody's expert is silently replaced); resubmitting the same weights is a no-op."""
    from hddm_core.pipeline.params import check_key_name

    check_key_name(name, "expert name")
    card = read_card(clustering_dir)
    vetting = vet_expert(expert_location, RunExpectations.from_card(card), cluster_id=cluster_id,
                         keep_bytes=store_fn is None)  # the bytes checked are the bytes registered
    checks = vetting.checks
    if not vetting.ok:
        raise ContributionRefused(refusal_message(checks), checks)
    manifest = vetting.loaded.manifest
    run_url = run_url or card["run"]
    key = posixpath.join(card["layout"]["experts"], name)
    run = ArtifactStore(run_url, storage_options)
    dest = posixpath.join(key, "expert.json")
    if run.exists(dest) and run.read_json(dest).get("weights_sha256") != manifest.weights_sha256:
        raise ContributionRefused(f"refused: {run.uri(key)} already holds a different expert; choose another name")
    if store_fn is not None:
        uri = store_fn(expert_location, run_url, name)
    else:  # the register-expert stage's own code path: weights first, manifest last (checks already run)
        from hddm_core.contrib.registration import NameBusy, NameTaken, register_expert

        try:  # under the name's lock: of two submissions racing on one name, one lands, the other is refused
            uri = register_expert(run, expert_location, card["layout"]["experts"], name, vetted=vetting,
                                  replace=False)["uri"]
        except (NameBusy, NameTaken) as exc:
            raise ContributionRefused(str(exc) if str(exc).startswith("refused") else f"refused: {exc}", checks) from None
    return {"uri": uri, "name": name, "key": key, "cluster_id": manifest.cluster_id, "objective": manifest.objective,
            "weights_sha256": manifest.weights_sha256, "clustering_version": manifest.clustering_version,
            "checks": [str(c) for c in checks]}
