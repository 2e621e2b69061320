"""prefect.yaml and infra specs, checked without a server."""
import os
import re

import yaml

from .conftest import REPO

STAGE_FLOWS = {"pipeline", "download", "recaption", "embed", "cluster", "prepare-cluster-data", "train-expert",
               "train-router", "register-expert", "evaluate", "train-monolith", "train-homogeneous"}


def _config():
    with open(os.path.join(REPO, "prefect.yaml")) as f:
        return yaml.safe_load(f)


def test_every_stage_has_a_deployment_whose_entrypoint_is_that_flow():
    """Loaded the way a worker's flow-run process loads it (prefect.flows.load_flow_from_entrypoint)."""
    from prefect.flows import load_flow_from_entrypoint

    deployments = {d["name"]: d for d in _config()["deployments"]}
    assert set(deployments) == STAGE_FLOWS
    for name, d in deployments.items():
        assert load_flow_from_entrypoint(d["entrypoint"], use_placeholder_flow=False).name == name
        assert d["work_pool"]["name"] in ("hddm-cpu", "hddm-gpu")
    assert deployments["train-expert"]["work_pool"]["name"] == "hddm-gpu"


def test_evaluate_has_a_nightly_schedule_and_the_expert_landed_trigger():
    d = next(d for d in _config()["deployments"] if d["name"] == "evaluate")
    assert d["schedules"][0]["cron"] == "0 3 * * *"
    trigger = d["triggers"][0]
    assert trigger["expect"] == ["hddm.expert.landed"]
    assert "event.payload.expert_uri" in trigger["parameters"]["expert_uri"]


def _keys_and_values(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _keys_and_values(v)
    elif isinstance(node, list):
        for v in node:
            yield from _keys_and_values(v)
    else:
        yield str(node)


def test_no_secrets_in_prefect_yaml():
    bad = [x for x in _keys_and_values(_config())
           if re.search(r"(?i)secret|password|token|api_key|aws_access|^AKIA", x) and "TOKENIZERS" not in x]
    assert bad == []


def test_stage_messages_reach_the_run_logs():
    """Every deployment names hddm's loggers for Prefect's handlers, and the tasks layer lets INFO through
    (Prefect leaves them at the root's WARNING)."""
    import subprocess
    import sys

    for d in _config()["deployments"]:
        assert "hddm_core" in d["work_pool"]["job_variables"]["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"], d["name"]
    code = ("import logging, prefect.logging.configuration as c; c.setup_logging(); import hddm_tasks; "
            "print(logging.getLogger('hddm_core.training.loop').getEffectiveLevel(), "
            "any(type(h).__name__ == 'APILogHandler' for h in logging.getLogger('hddm_core').handlers))")
    env = {**os.environ, "PREFECT_LOGGING_EXTRA_LOGGERS": "hddm_core,hddm_tasks,hddm_flows"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["20", "True"], out.stderr[-2000:]


def test_baseline_deployments_run_on_the_gpu_pool_like_train_expert():
    deployments = {d["name"]: d for d in _config()["deployments"]}
    for name in ("train-monolith", "train-homogeneous"):
        assert deployments[name]["work_pool"]["name"] == deployments["train-expert"]["work_pool"]["name"], name
