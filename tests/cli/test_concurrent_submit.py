"""Two `hddmp expert submit --name X` racing: exactly one lands, the other exits non-zero with one line.

Each submission runs in its own process (spawn); a delay inside the store's writes widens the window
between "is the name free?" and "the manifest is published" to 1.5 s, so without a per-name lock both
submissions pass the check and both exit 0 while only the last writer's expert is stored.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os

import pytest

from hddm_core.checkpoints import load_expert
from hddm_core.contrib.name_lock import LOCK_NAME, NameBusy, name_lock
from hddm_core.storage import ArtifactStore

from .published_run_setup import fitting_expert, published_run


def _setup(tmp_path):
    clustering, run, version = published_run(tmp_path, b"centroids")
    return clustering, run, [fitting_expert(tmp_path / who, version, seed) for seed, who in enumerate(("alice", "bob"))]


def _submit(expert, clustering, barrier, out):
    """One `hddmp expert submit` in a fresh process, its writes slowed to widen the race."""
    import contextlib
    import io
    import time

    from hddm_cli.main import main
    from hddm_core.storage import ArtifactStore

    write = ArtifactStore.write_bytes

    def slow_write(self, key, data):
        time.sleep(1.5)
        return write(self, key, data)

    ArtifactStore.write_bytes = slow_write
    stdout, stderr = io.StringIO(), io.StringIO()
    barrier.wait(timeout=120)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(["expert", "submit", expert, "--clustering", clustering, "--name", "shared", "--no-event"])
        except SystemExit as exc:
            code = exc.code
    out.put((expert, code, stdout.getvalue(), stderr.getvalue()))


@pytest.mark.slow  # two spawned processes importing torch: ~60 s on a loaded 2-core machine
@pytest.mark.timeout(300)
def test_two_submissions_under_one_name_one_lands_the_other_is_refused(tmp_path):
    clustering, run, experts = _setup(tmp_path)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_submit, args=(e, clustering, barrier, out)) for e in experts]
    for p in procs:
        p.start()
    results = [out.get(timeout=280) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    codes = sorted(code for _, code, _, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    winner = next(e for e, code, _, _ in results if code == 0)
    loser_err = next(err for _, code, _, err in results if code != 0).strip().splitlines()
    assert len(loser_err) == 1 and ("in progress" in loser_err[0] or "different expert" in loser_err[0]), loser_err
    landed = os.path.join(run, "experts", "registry", "shared")
    stored = load_expert(landed)  # the stored pair is whole and is the winner's
    assert stored.manifest.weights_sha256 == load_expert(winner).manifest.weights_sha256
    assert not os.path.exists(os.path.join(landed, LOCK_NAME))


def test_the_lock_is_exclusive_released_and_taken_over_after_its_lease(tmp_path):
    store = ArtifactStore(str(tmp_path))
    with name_lock(store, "experts/x"):
        with pytest.raises(NameBusy, match="in progress"):
            with name_lock(store, "experts/x"):
                pass
    with name_lock(store, "experts/x", lease_s=-1):  # a lease already expired: as if its holder was killed
        pass
    store.write_bytes(f"experts/x/{LOCK_NAME}", json.dumps({"owner": "killed", "expires": 0}).encode())
    with name_lock(store, "experts/x") as owner:
        assert store.read_json(f"experts/x/{LOCK_NAME}")["owner"] == owner
    assert not store.exists(f"experts/x/{LOCK_NAME}")
