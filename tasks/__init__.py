"""Thin Prefect tasks around hddm_core.pipeline.stages. The folder tasks/ installs as the package `hddm_tasks`
(pyproject.toml).

Stage messages in the run's logs: Prefect attaches its console and API handlers to the loggers named in
PREFECT_LOGGING_EXTRA_LOGGERS (prefect.yaml sets hddm_core, hddm_tasks, hddm_flows for every deployment)
but leaves their level to the root's, WARNING; so the INFO lines a stage writes (reused, stored, resumed
at step N, event emitted) would still be dropped. Importing the tasks layer lets them through.
"""
import logging as _logging
import os as _os

for _name in _os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(","):
    if _name.strip().startswith("hddm") and _logging.getLogger(_name.strip()).level == _logging.NOTSET:
        _logging.getLogger(_name.strip()).setLevel(_logging.INFO)
