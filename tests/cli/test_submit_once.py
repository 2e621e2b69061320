"""A submitted expert is read, hashed and smoke-forwarded once, and the bytes stored are the bytes checked.

A hand-made published-run card (what `hddmp contrib fetch` writes) and a tiny expert declaring that
run's settings; submit_expert then stores it through the register-expert stage's code. Counters on the
one weights-hash function and the one smoke-forward function prove nothing is redone.
"""
from __future__ import annotations

import os

import pytest

import hddm_core.checkpoints.weights_checks as validate_mod  # where the one weights hash lives
import hddm_core.contrib.registration as registration_mod
from hddm_core.checkpoints import load_expert
from hddm_core.contrib import register_expert, submit_expert, vet_expert
from hddm_core.storage import ArtifactStore

from .published_run_setup import fitting_expert, published_run


@pytest.fixture
def run_and_expert(tmp_path):
    """(clustering folder with a card, the run's root, an expert folder fitting that run)."""
    clustering, run, version = published_run(tmp_path, b"centroids of a run, any bytes: the card pins their sha256")
    return clustering, run, fitting_expert(tmp_path / "alice", version)


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
