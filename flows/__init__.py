"""Prefect flows: order and fan-out only. The folder flows/ installs as the package `hddm_flows`
(pyproject.toml), so deployments import it on any worker host, from any working directory."""
