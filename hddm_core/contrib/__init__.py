"""The contributor's path: fetch a published run, assign data, check compatibility, register and submit an expert.

A published run is an artifact root URL (local folder or s3://...) the contributor can read. The
path, each step a plain function (the `hddmp contrib ...` commands call them):

    card = fetch_clustering(run_url, "my-hddm/clustering")      # centroids + the run's settings
    assign_contribution("my-hddm/clustering", {"images": "photos/"}, "my-hddm/work")
    prepare_contribution("my-hddm/work")                        # the run's latent/text settings
    ... train with hddmp expert train --artifact-root my-hddm/work ... (hddm_core.pipeline.stages)
    submit_expert(expert_dir, "my-hddm/clustering", name="alice-cats")  # checks, then stores

Modules, one job each: published_run (fetch, read the card), sources (the contributor's images),
assign and prepare (encode them with the run's models, built by hddm_core.data.factories),
work_folder (contribution.json), compatibility (every check on an expert, run once), registration
(store a vetted expert), submit (check, then store in the run).
"""
from hddm_core.contrib.assign import assign_contribution
from hddm_core.contrib.compatibility import (RunExpectations, Vetting, clustering_version_from_sha,
                                             compatibility_checks, encoder_base_name, expert_checks, vet_expert)
from hddm_core.contrib.prepare import prepare_contribution
from hddm_core.contrib.published_run import CARD_NAME, CENTROIDS_NAME, RunLayout, expectations, fetch_clustering, read_card
from hddm_core.contrib.registration import register_expert, smoke_forward
from hddm_core.contrib.sources import IMAGE_SUFFIXES, SOURCE_KINDS, check_source, open_source
from hddm_core.contrib.submit import ContributionRefused, check_contribution, refusal_message, submit_expert
from hddm_core.contrib.work_folder import (CONTRIBUTION_NAME, is_contribution, read_contribution, record_trained_expert,
                                           trained_expert)

__all__ = [
    "CARD_NAME", "CENTROIDS_NAME", "CONTRIBUTION_NAME", "ContributionRefused", "IMAGE_SUFFIXES", "RunExpectations",
    "RunLayout", "SOURCE_KINDS", "Vetting", "assign_contribution", "check_contribution", "check_source",
    "clustering_version_from_sha", "compatibility_checks", "encoder_base_name", "expectations", "expert_checks",
    "fetch_clustering", "is_contribution", "open_source", "prepare_contribution", "read_card", "read_contribution",
    "record_trained_expert", "refusal_message", "register_expert", "smoke_forward", "submit_expert",
    "trained_expert", "vet_expert",
]
