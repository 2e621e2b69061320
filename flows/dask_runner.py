"""Map-style stages on a Dask cluster through prefect-dask (address from the stage's parameters).

Without an address the stage task runs in the flow's own process (its units on a local pool of
`params.workers` processes when that is above 1). With one, the stage's work units are Prefect task
runs submitted through DaskTaskRunner (flows/unit_map.py), annotated with the Dask resource GPU=1
when the stage wants a GPU (so only GPU workers take them); the coordinator plans the units and
writes the manifest in this flow's process. A task annotated with a resource no worker has waits
forever: start GPU workers with `--resources GPU=1`. Use a real Prefect server (PREFECT_API_URL)
with Dask: otherwise each Dask worker starts its own ephemeral API (docs/stack-notes.md).
"""
from __future__ import annotations

from prefect import flow

from hddm_flows.unit_map import STAGE_RUNNERS, run_stage_units


def on_dask(task, params):
    address = getattr(params, "dask_address", None)
    if not address:
        return task(params)
    from prefect_dask import DaskTaskRunner

    if task.name in STAGE_RUNNERS:
        @flow(name=f"{task.name}-units-on-dask", task_runner=DaskTaskRunner(address=address))
        def _units(params):
            return run_stage_units(task.name, params)

        return _units(params)

    @flow(name=f"{task.name}-on-dask", task_runner=DaskTaskRunner(address=address))
    def _submit(params):  # a task without work units: the whole task is one Dask task
        import dask

        with dask.annotate(resources={"GPU": 1} if params.device == "cuda" else {}):
            return task.submit(params).result()

    return _submit(params)
