"""Where and how the pipeline runs: local server and workers, pools, Dask, Kubernetes. The folder infra/
installs as the package `hddm_infra` (pyproject.toml): `python -m hddm_infra.up` etc. from any folder."""
