"""Where and how the pipeline runs: local server and workers, pools, Dask, Kubernetes."""
