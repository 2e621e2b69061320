"""Prefect's ephemeral API must get long enough to start on a loaded 2-core machine (20 s by default; the
demo passed under load 4-8 with 300 s): every entry point that starts one sets the project's value
unless the user set their own (hddm_flows.environment)."""
import os
import re

import pytest

from hddm_flows import environment
from hddm_flows.environment import DEFAULTS, EPHEMERAL_STARTUP_TIMEOUT

from .conftest import REPO

KEY = EPHEMERAL_STARTUP_TIMEOUT


def test_defaults_fill_only_what_the_user_left_unset():
    env = environment.apply_defaults({KEY: "45"}, MPLBACKEND="Agg")
    assert env[KEY] == "45" and env["MPLBACKEND"] == "Agg" and env["HF_HUB_OFFLINE"] == "1"
    assert environment.apply_defaults({})[KEY] == "300"
    assert environment.ephemeral_startup_timeout({}) == 300.0
    assert environment.ephemeral_startup_timeout({KEY: "45"}) == 45.0
    for bad in ("soon", "0"):
        with pytest.raises(ValueError, match=KEY):
            environment.ephemeral_startup_timeout({KEY: bad})


@pytest.mark.parametrize("user", [None, "45"])
def test_hddmp_sets_it_before_anything_starts(monkeypatch, tmp_path, user):
    from hddm_cli.main import main

    if user is None:
        monkeypatch.delenv(KEY, raising=False)
    else:
        monkeypatch.setenv(KEY, user)
    main(["-q", "expert", "inspect", str(tmp_path / "missing")])  # any command: the environment comes first
    assert os.environ[KEY] == (user or DEFAULTS[KEY])


def test_the_demo_sets_it_before_its_flow_starts_the_api(monkeypatch, tmp_path):
    import hddm_flows.pipeline
    from hddm_flows.demo import run_demo

    seen = {}

    def pipeline(params):
        seen.update(timeout=os.environ.get(KEY), root=params.artifact_root)
        return {"report": f"file://{tmp_path}/report.md"}

    monkeypatch.delenv(KEY, raising=False)
    monkeypatch.setattr(hddm_flows.pipeline, "pipeline", pipeline)
    assert run_demo(str(tmp_path)) == f"{tmp_path}/report.md"
    assert seen == {"timeout": DEFAULTS[KEY], "root": str(tmp_path)}


def test_the_test_suite_runs_prefect_with_it():
    """tests/conftest.py applies the defaults before Prefect is imported; the harness fixture then waits
    as long as the setting says (server_startup_timeout=None)."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    assert PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() == int(os.environ[KEY])


def test_make_and_ci_set_the_same_value_without_overriding_the_user():
    makefile = open(os.path.join(REPO, "Makefile")).read()
    assert re.search(rf"^export {KEY} \?= {DEFAULTS[KEY]}$", makefile, re.M)
    ci = open(os.path.join(REPO, ".ci", "run")).read()
    assert f'{KEY}="${{{KEY}:-{DEFAULTS[KEY]}}}"' in ci


def test_the_local_stack_passes_it_to_its_server_and_workers(monkeypatch):
    from hddm_infra.local_stack import offline_env

    monkeypatch.delenv(KEY, raising=False)
    assert offline_env()[KEY] == DEFAULTS[KEY]
    monkeypatch.setenv(KEY, "45")
    assert offline_env()[KEY] == "45"
