"""Fixtures for the command-line tests: an offline environment with no Prefect API, temporary homes."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _offline_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-homes")
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME", "HDDM_ARTIFACT_ROOT", "HF_HUB_OFFLINE",
                                            "TORCH_HOME", "MPLBACKEND")}
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("HDDM_ARTIFACT_ROOT", None)
    os.environ.update(PREFECT_HOME=str(home / "prefect"), HF_HUB_OFFLINE="1", TORCH_HOME=str(home / "torch"),
                      MPLBACKEND="Agg")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
