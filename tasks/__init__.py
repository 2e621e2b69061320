"""Thin Prefect tasks around hddm_core.pipeline.stages (a repository folder, run from the project root)."""
