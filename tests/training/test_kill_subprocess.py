"""Real kills of a training process: SIGKILL at random moments (during steps or checkpoint writes),
os._exit inside a checkpoint write, and SIGTERM (which must checkpoint at the next step boundary
and exit cleanly). After every death the store shows no partial file and the latest checkpoint
verifies; the run finally completes bit-identical (weights, EMA, optimiser) to an uninterrupted one.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from hddm_core.storage import ArtifactStore
from hddm_core.training.checkpointing import CheckpointManager

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 40
SLOW = "0.015"  # seconds per sample read: ~60 ms per step, a few seconds per run


def start(run_dir, *extra):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "tests.training.run_tiny", str(run_dir), str(STEPS), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ready(proc):
    line = proc.stdout.readline()
    assert line.strip() == "READY", (line, proc.stderr.read() if proc.poll() is not None else "")


def finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    results = [line.split() for line in out.splitlines() if line.startswith("RESULT")]
    return proc.returncode, (results[-1] if results else None), err


def pointer_step(run_dir):
    path = os.path.join(run_dir, "checkpoints", "latest.json")
    try:
        with open(path) as f:
            return json.load(f)["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def check_store_sane(run_dir):
    store = ArtifactStore(str(run_dir))
    assert not [k for k in store.list("") if ".tmp-" in k]
    ckpt = CheckpointManager(store).load_latest()  # verifies every sha256
    return None if ckpt is None else ckpt.step


def test_sigkill_crash_and_sigterm_then_resume_is_bit_identical(tmp_path):
    rc, ref, err = finish(start(tmp_path / "ref"))
    assert rc == 0 and ref[1] == "completed", err
    run_dir = str(tmp_path / "run")
    rng = random.Random(2024)
    events = []

    # SIGTERM: saves at the next step boundary, exits 0, reports "preempted".
    proc = start(run_dir, "--slow", SLOW)
    wait_ready(proc)
    deadline = time.time() + 120
    while (pointer_step(run_dir) or 0) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    rc, res, err = finish(proc)
    assert rc == 0 and res is not None and res[1] == "preempted", (rc, res, err)
    stopped = int(res[2])
    assert 4 <= stopped < STEPS and pointer_step(run_dir) == stopped  # the state at the boundary was saved
    events.append(f"SIGTERM -> preempted at step {stopped}")

    # SIGKILL at random moments, and os._exit inside checkpoint writes.
    for kind in ["kill", "kill", "kill", "partial:optimizer.safetensors:2", "before-pointer:2", "kill"]:
        before = pointer_step(run_dir)
        if kind == "kill":
            proc = start(run_dir, "--slow", SLOW)
            wait_ready(proc)
            deadline = time.time() + 120  # kill only once it trains: wait for a new checkpoint, then
            while pointer_step(run_dir) == before and time.time() < deadline and proc.poll() is None:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment: mid-step or mid-write (saves every 2 steps)
            proc.kill()
            rc, _, _ = finish(proc)
        else:
            proc = start(run_dir, "--slow", SLOW, "--crash", kind)
            rc, _, _ = finish(proc)
            assert rc == 137
        step = check_store_sane(run_dir)
        events.append(f"{kind}: rc {rc}, latest complete checkpoint {before} -> {step}")
        if rc == 0:  # finished before the kill landed: nothing more to interrupt
            break

    rc, res, err = finish(start(run_dir))
    print("\n[kill test] " + "; ".join(events))
    assert rc == 0 and res[1] == "completed" and int(res[2]) == STEPS, err
    assert res[3] == ref[3], "resumed run differs from the uninterrupted one"
