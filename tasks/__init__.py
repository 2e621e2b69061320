"""Thin Prefect tasks around hddm_core.pipeline.stages. The folder tasks/ installs as the package `hddm_tasks`
(pyproject.toml)."""
