"""hddm.expert.landed: one emitter (hddm_tasks.events) for every way an expert lands: the register-expert
flow's task (test_tasks.py), `hddmp expert register` in-process and `hddmp expert submit`."""
import os
import time
import uuid

import pytest

from hddm_cli.main import main
from hddm_tasks import events

from .conftest import tiny_expert


@pytest.fixture
def sent(monkeypatch):
    """Events handed to Prefect by the one emitter: through the background worker (emit_event, in a flow
    run) or delivered directly (_deliver, from the command line)."""
    out = []
    monkeypatch.setattr(events, "emit_event", lambda event, **kw: out.append((event, kw)))
    monkeypatch.setattr(events, "_deliver", lambda api_url, fields, timeout: out.append(
        (fields["event"], {k: v for k, v in fields.items() if k != "event"})))
    return out


def test_event_id_is_deterministic_per_weights():
    a = events.landed_event_id("ab" * 32)
    assert a == events.landed_event_id("ab" * 32) != events.landed_event_id("cd" * 32)
    assert uuid.UUID(a).version == 5
    assert a == str(uuid.uuid5(events.EVENT_NAMESPACE, "hddm.expert.landed:" + "ab" * 32))
    with pytest.raises(ValueError, match="weights sha256"):
        events.landed_event_id("")


def _register(tmp_path, capsys, *extra):
    src = tiny_expert(tmp_path / "contrib", objective="ddpm-eps", cluster_id=2)
    code = main(["-q", "expert", "register", "--artifact-root", str(tmp_path / "run"), "--source", src,
                 "--name", "alice", *extra])
    return code, capsys.readouterr().out


def test_inprocess_register_sends_the_landed_event(tmp_path, capsys, monkeypatch, sent):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    code, out = _register(tmp_path, capsys)
    assert code == 0
    assert [e for e, _ in sent] == ["hddm.expert.landed"]
    kw = sent[0][1]
    sha = kw["payload"]["weights_sha256"]
    assert kw["id"] == uuid.UUID(events.landed_event_id(sha))
    assert kw["payload"]["expert_uri"].endswith("experts/registry/alice")
    assert (kw["payload"]["cluster_id"], kw["payload"]["objective"]) == (2, "ddpm-eps")
    assert kw["resource"]["prefect.resource.id"] == f"hddm.expert.{sha}"
    assert f"sent hddm.expert.landed (event {events.landed_event_id(sha)})" in out


def test_inprocess_register_without_an_api_or_with_no_emit_event_sends_nothing(tmp_path, capsys, monkeypatch, sent):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    code, out = _register(tmp_path, capsys)
    assert code == 0 and sent == []
    assert "no event sent: no Prefect API is configured" in out and "hddmp evaluate" in out
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    code, out = _register(tmp_path / "again", capsys, "--no-emit-event")
    assert code == 0 and sent == []
    assert "no event sent" in out


def test_an_unreachable_server_is_said_plainly_and_the_expert_stays_stored(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens on port 9
    code, out = _register(tmp_path, capsys)
    assert code == 0, out
    assert "no event sent" in out and "could not be delivered to http://127.0.0.1:9/api" in out
    assert "hddmp evaluate" in out
    assert os.path.isdir(tmp_path / "run" / "experts" / "registry" / "alice")


def test_submit_announces_through_the_same_emitter(monkeypatch, sent):
    from hddm_cli.events import announce_landing

    result = {"uri": "s3://run/experts/registry/bob", "key": "experts/registry/bob", "weights_sha256": "ef" * 32,
              "cluster_id": 0, "objective": "flow-matching"}
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    line = announce_landing(result, run_url="s3://run", experts_prefix="experts/registry")
    assert len(sent) == 1 and sent[0][1]["id"] == uuid.UUID(events.landed_event_id("ef" * 32))
    assert sent[0][1]["payload"] == {"expert_uri": result["uri"], "weights_sha256": "ef" * 32, "cluster_id": 0,
                                     "objective": "flow-matching"}
    assert events.landed_event_id("ef" * 32) in line


@pytest.mark.slow
def test_inprocess_register_event_reaches_a_prefect_server(tmp_path, capsys, monkeypatch, prefect_harness):
    """The real path (no stand-in emitter): the event is stored by the server under its deterministic id."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    code, out = _register(tmp_path, capsys)
    assert code == 0 and "sent hddm.expert.landed" in out
    event_id = out.split("(event ", 1)[1].split(")", 1)[0]  # "sent" only after the server received it
    deadline, found = time.monotonic() + 60, []
    with get_client(sync_client=True) as client:
        while not found and time.monotonic() < deadline:
            found = client.read_events(EventFilter(id=EventIDFilter(id=[uuid.UUID(event_id)])), limit=10).events
            time.sleep(1)
    assert [e.event for e in found] == ["hddm.expert.landed"]
    assert found[0].payload["expert_uri"].endswith(os.path.join("experts", "registry", "alice"))


def test_a_repeat_landing_of_an_evaluated_expert_says_nothing_is_evaluated_again(tmp_path, capsys, monkeypatch, sent):
    from hddm_core.pipeline.params import EvaluateParams
    from hddm_core.pipeline.stages import StageRef, for_landed_expert
    from hddm_core.storage import open_store
    from hddm_tasks.once import EvaluationClaim, claim_key

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    root = str(tmp_path / "run")
    src = tiny_expert(tmp_path / "contrib", objective="ddpm-eps", cluster_id=2)
    argv = ["-q", "expert", "register", "--artifact-root", root, "--source", src, "--name", "alice"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "evaluates it once" in out and "already evaluated" not in out
    uri = sent[0][1]["payload"]["expert_uri"]
    store = open_store(root)  # what the triggered evaluation recorded when it finished
    store.write_json("evaluations/e1/_manifest.json", {"stand-in": True})
    params = for_landed_expert(EvaluateParams(artifact_root=root), uri)
    EvaluationClaim(store, claim_key(params), "run-1", lambda _: None).finish(StageRef(
        stage="evaluate", uri=store.uri("evaluations/e1"), prefix="evaluations/e1", content_hash="h",
        extra={"report": store.uri("evaluations/e1/report.md")}))
    assert main(argv) == 0  # the same expert landed again
    out = capsys.readouterr().out
    assert len(sent) == 2
    assert "already evaluated (" + store.uri("evaluations/e1/report.md") in out and "nothing is evaluated again" in out
