"""The evaluation's idempotency record (hddm_tasks.once), without a server: exclusive claims, done
records that outlive any process, takeover of a dead claimant's attempt, waiting for a live one."""
import threading

import pytest

from hddm_core.pipeline.stages import StageRef
from hddm_core.storage import open_store
from hddm_tasks.once import CLAIMS_PREFIX, EvaluationClaim, claim_key, create_exclusive


def _ref(store, prefix="evaluations/abc"):
    store.write_json(f"{prefix}/_manifest.json", {"stand-in": True})
    return StageRef(stage="evaluate", uri=store.uri(prefix), prefix=prefix, content_hash="h",
                    extra={"report": store.uri(f"{prefix}/report.md")})


def test_create_exclusive_has_exactly_one_winner_among_racing_threads(tmp_path):
    store = open_store(str(tmp_path))
    wins, barrier = [], threading.Barrier(8)

    def claim(i):
        barrier.wait()
        if create_exclusive(store, "claims/k/attempt-0001.json", f'{{"who": {i}}}'.encode()):
            wins.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(wins) == 1
    assert store.read_json("claims/k/attempt-0001.json") == {"who": wins[0]}


def test_a_finished_evaluation_is_found_by_any_later_run(tmp_path):
    store = open_store(str(tmp_path))
    first = EvaluationClaim(store, "k", "run-1", run_state=lambda _: None)
    assert first.acquire().attempt == 1 and first.acquire().ref is None  # its own claim: evaluate
    first.finish(_ref(store))
    # a new process, a new server (the run id unknown to it): finishes at once with the report
    later = EvaluationClaim(open_store(str(tmp_path)), "k", "run-2", run_state=lambda _: None).acquire()
    assert later.ref is not None and later.ref.reused and later.by == "run-1"
    assert later.ref.extra["report"].endswith("evaluations/abc/report.md")
    assert store.list(CLAIMS_PREFIX) == [f"{CLAIMS_PREFIX}/k/attempt-0001.json", f"{CLAIMS_PREFIX}/k/done.json"]


def test_a_dead_claimants_attempt_is_taken_over_and_deleted_outputs_are_evaluated_again(tmp_path):
    store = open_store(str(tmp_path))
    EvaluationClaim(store, "k", "run-1", run_state=lambda _: None).acquire()
    states = {"run-1": "CRASHED"}
    taker = EvaluationClaim(store, "k", "run-2", run_state=states.get)
    assert taker.acquire().attempt == 2
    taker.finish(_ref(store))
    store.delete("evaluations/abc/_manifest.json")  # outputs gone: the record no longer holds
    assert EvaluationClaim(store, "k", "run-3", run_state=lambda _: "COMPLETED").acquire().attempt == 3


def test_a_live_claimant_is_waited_for_and_its_result_returned(tmp_path):
    store = open_store(str(tmp_path))
    owner = EvaluationClaim(store, "k", "run-1", run_state=lambda _: None)
    owner.acquire()
    polls = []

    def state(run_id):  # the owner finishes while the second run waits
        polls.append(run_id)
        if len(polls) == 2:
            owner.finish(_ref(store))
        return "RUNNING"

    out = EvaluationClaim(store, "k", "run-2", run_state=state, poll_s=0.01).acquire()
    assert out.ref is not None and out.by == "run-1" and polls == ["run-1", "run-1"]


def test_force_evaluates_again_under_a_new_attempt(tmp_path):
    store = open_store(str(tmp_path))
    c = EvaluationClaim(store, "k", "run-1", run_state=lambda _: None)
    c.acquire()
    c.finish(_ref(store))
    assert EvaluationClaim(store, "k", "run-2", run_state=lambda _: "RUNNING").acquire(force=True).attempt == 2


def test_claim_key_follows_weights_and_config_not_where_it_runs(tmp_path):
    from hddm_core.pipeline.params import EvaluateParams

    from .conftest import tiny_expert

    a = tiny_expert(tmp_path / "a", cluster_id=0)
    b = tiny_expert(tmp_path / "b", objective="ddpm-eps", cluster_id=1)
    base = EvaluateParams(artifact_root=str(tmp_path / "root"), experts=[a])
    assert claim_key(base) == claim_key(base.model_copy(update={"device": "cpu", "batch_size": 7}))
    assert claim_key(base) != claim_key(base.model_copy(update={"n_prompts": base.n_prompts + 1}))
    assert claim_key(base) != claim_key(base.model_copy(update={"experts": [a, b]}))
    with pytest.raises(FileNotFoundError):
        claim_key(base.model_copy(update={"experts": [str(tmp_path / "missing")]}))
