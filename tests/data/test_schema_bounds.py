"""Non-finite and absurd numbers are refused with a clear message where untrusted values enter:
parameter models (the Prefect form, a JSON file), the published run card, and any manifest the
store reads (latent_scale=Infinity, image_resolution=1e30 used to be accepted)."""
from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from hddm_core.contrib.compatibility import RunExpectations
from hddm_core.manifests import read_manifest
from hddm_core.pipeline.params import EvaluateParams, PrepareParams, TrainExpertParams
from hddm_core.storage import open_store

CARD = {"latent": {"space": "pixel", "scale": 1.0, "resolution": 16, "latent_shape": [3, 16, 16]},
        "text": {"encoder": "all-MiniLM-L6-v2", "width": 384}, "n_clusters": 4, "clustering_version": "kmeans-x"}


def test_card_accepts_ordinary_values():
    assert RunExpectations.from_card(CARD).image_resolution == 16


@pytest.mark.parametrize("field,value", [("scale", float("inf")), ("scale", float("nan")), ("scale", -1.0),
                                         ("scale", 1e30), ("resolution", 1e30), ("resolution", 10**30),
                                         ("resolution", 0), ("resolution", 16.5), ("resolution", True)])
def test_card_refuses_absurd_latent_values(field, value):
    card = copy.deepcopy(CARD)
    card["latent"][field] = value
    with pytest.raises(ValueError, match=f"latent {field}"):
        RunExpectations.from_card(card)


@pytest.mark.parametrize("model,values,where", [
    (TrainExpertParams, {"training": {"lr": float("inf")}}, "finite"),
    (TrainExpertParams, {"caption_dropout": float("nan")}, "finite"),
    (TrainExpertParams, {"training": {"seed": 10**30}}, "less than or equal"),
    (TrainExpertParams, {"training": {"warmup_steps": 10**30}}, "less than or equal"),
    (TrainExpertParams, {"training": {"checkpoint_interval": 10**30}}, "less than or equal"),
    (PrepareParams, {"resolution": 10**30}, "less than or equal"),
    (EvaluateParams, {"cfg_scale": float("inf")}, "finite"),
    (EvaluateParams, {"tau": float("nan")}, "finite"),
])
def test_params_refuse_non_finite_and_absurd(model, values, where):
    with pytest.raises(ValidationError, match=where):
        model.model_validate(values)


@pytest.mark.parametrize("literal", ["Infinity", "NaN", "-Infinity", "1e999", "1000000000000000000000000000000"])
def test_stage_manifest_with_non_finite_latent_is_refused(tmp_path, literal):
    store = open_store(str(tmp_path))
    store.write_bytes("prepare/_manifest.json", ('{"stage": "prepare", "config": {"latent": {"scale": %s}}, '
                                                 '"config_hash": "x", "inputs": {}, "outputs": {}, "version": 1}'
                                                 % literal).encode())
    with pytest.raises(ValueError, match="not valid JSON"):
        read_manifest(store, "prepare")
