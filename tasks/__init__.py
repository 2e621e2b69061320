"""Thin Prefect tasks around hddm_core.stages (a repository folder, run from the project root)."""
