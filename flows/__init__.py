"""Prefect flows: order and fan-out only (a repository folder, run from the project root)."""
