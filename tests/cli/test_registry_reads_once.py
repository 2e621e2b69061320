"""The register-expert stage reads the source once: the bytes it validates are the bytes it stores.

A source that changes while it is being registered (after its manifest is read, or after its weights
are read) can never leave a stored manifest naming weights that were not copied: either the stored
pair is exactly what was validated, or nothing is published."""
from __future__ import annotations

import os

import pytest

from hddm_core.checkpoints import load_expert
from hddm_core.contrib import register_expert
from hddm_core.storage import ArtifactStore

from .test_concurrent_submit import _setup


@pytest.fixture
def source(tmp_path):
    _, run, (alice, bob) = _setup(tmp_path)
    return ArtifactStore(run), alice, bob


def _weights(folder):
    return next(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors"))


def _on_read(monkeypatch, suffix, action):
    """Run action() right before (when='before') or after the source's `suffix` object is read."""
    real = ArtifactStore.read_bytes

    def hooked(self, key, *args, **kwargs):
        when, fn = action
        if key.endswith(suffix) and when == "before":
            fn()
        data = real(self, key, *args, **kwargs)
        if key.endswith(suffix) and when == "after":
            fn()
        return data

    monkeypatch.setattr(ArtifactStore, "read_bytes", hooked)


def test_weights_changed_after_they_were_read_do_not_reach_the_registry(source, monkeypatch):
    run, alice, _ = source
    original = open(_weights(alice), "rb").read()

    def tamper():
        with open(_weights(alice), "r+b") as f:
            f.seek(-8, 2)
            f.write(b"\xff" * 8)

    _on_read(monkeypatch, ".safetensors", ("after", tamper))
    result = register_expert(run, alice, "experts/registry", "a")
    monkeypatch.undo()
    stored = load_expert(result["uri"])
    assert all(c.ok for c in stored.checks)
    assert open(os.path.join(result["uri"], stored.manifest.weights_file), "rb").read() == original


@pytest.mark.parametrize("change", ["swapped", "deleted"])
def test_weights_changed_between_manifest_and_weights_reads_publish_nothing(source, monkeypatch, change):
    run, alice, bob = source
    target = _weights(alice)
    action = (lambda: os.replace(_weights(bob), target)) if change == "swapped" else (lambda: os.remove(target))
    _on_read(monkeypatch, "expert.json", ("after", action))
    with pytest.raises((ValueError, FileNotFoundError)):
        register_expert(run, alice, "experts/registry", "a")
    assert not os.path.exists(os.path.join(run.root, "experts", "registry", "a", "expert.json"))
