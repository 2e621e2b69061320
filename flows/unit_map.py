"""A map stage's work units as Prefect task runs on prefect-dask: one task run per unit, each with its
own state and retries in the UI. The units, their execution and the manifest are hddm_core's
(hddm_core.data.coordinator); this module only adapts its executor interface to Prefect tasks."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from hddm_core.pipeline import stages

UNIT_RETRIES = 2  # infrastructure failures; a bad sample never raises (counted in the manifest)
STAGE_RUNNERS = {"embed": stages.run_embed, "recaption": stages.run_recaption}


@task(name="map-unit", retries=UNIT_RETRIES, retry_delay_seconds=5, cache_policy=NO_CACHE)
def map_unit(fn, *args):
    return fn(*args)


class PrefectTasks:
    """hddm_core executor over Prefect tasks; call inside a flow whose task runner is a DaskTaskRunner."""

    def run(self, fn, items: list[tuple], names: list[str], gpu: bool = False) -> list:
        import dask

        with dask.annotate(resources={"GPU": 1} if gpu else {}):
            futures = [map_unit.with_options(task_run_name=name).submit(fn, *args) for args, name in zip(items, names)]
        return [f.result() for f in futures]


def run_stage_units(stage: str, params):
    """Run a map stage (embed, recaption) with its units as Prefect task runs of the current flow."""
    if stage not in STAGE_RUNNERS:
        raise ValueError(f"stage {stage!r} has no work units; map stages: {sorted(STAGE_RUNNERS)}")
    return STAGE_RUNNERS[stage](params, executor=PrefectTasks())
