"""Map-style stages on a Dask cluster through prefect-dask (address from the stage's parameters).

Without an address the task runs in the flow's own process. With one, it is submitted through
DaskTaskRunner, annotated with the Dask resource GPU=1 when it wants a GPU (so only GPU workers take
it); a task annotated with a resource no worker has waits forever, so tasks carry timeouts.
Use a real Prefect server (PREFECT_API_URL) with Dask: otherwise each Dask worker starts its own
ephemeral API (docs/stack-notes.md).
"""
from __future__ import annotations

from prefect import flow


def on_dask(task, params):
    address = getattr(params, "dask_address", None)
    if not address:
        return task(params)
    from prefect_dask import DaskTaskRunner

    @flow(name=f"{task.name}-on-dask", task_runner=DaskTaskRunner(address=address))
    def _submit(params):
        import dask

        with dask.annotate(resources={"GPU": 1} if params.device == "cuda" else {}):
            return task.submit(params).result()

    return _submit(params)
