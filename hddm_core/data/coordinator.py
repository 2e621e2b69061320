"""Coordinator of a map stage: plan the units, run them on an executor, write the manifest last.

Executors run one function over many argument tuples and return the results in order:
- `InProcess`: this process, one after the other (the single-process stage);
- `ProcessPool`: a local pool of spawned worker processes (concurrent.futures);
- `DaskExecutor`: a distributed cluster (tasks named per unit, GPU units annotated {"GPU": 1});
- hddm_flows.unit_map wraps the same interface in Prefect tasks on prefect-dask (one task run per unit).
Each retries a failing unit a bounded number of times (a unit whose worker is killed is rerun by
Dask itself); bad samples never raise (unit_runner records them as values).
"""
from __future__ import annotations

import logging
import multiprocessing
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from hddm_core.data.sharded_stage import shard_name
from hddm_core.data.unit_runner import ModelSpec, UnitJob, describe_model, run_unit
from hddm_core.data.units import WorkUnit, plan_units
from hddm_core.manifests import (MANIFEST_NAME, StageManifest, completed, describe_outputs, hash_config, read_manifest,
                                 write_manifest)
from hddm_core.storage import ArtifactStore

log = logging.getLogger(__name__)


class UnitFailed(RuntimeError):
    """A unit failed for an infrastructure reason more often than its retries allow."""


def _check_retries(retries: int) -> int:
    if int(retries) < 0:
        raise ValueError(f"retries must be >= 0, got {retries!r}")
    return int(retries)


class InProcess:
    def __init__(self, retries: int = 0):
        self.retries = _check_retries(retries)

    def run(self, fn: Callable, items: list[tuple], names: list[str], gpu: bool = False) -> list:
        out = []
        for args, name in zip(items, names):
            for attempt in range(self.retries + 1):
                try:
                    out.append(fn(*args))
                    break
                except Exception as exc:
                    if attempt == self.retries:
                        raise UnitFailed(f"{name} failed {attempt + 1} times: {type(exc).__name__}: {exc}") from exc
                    log.warning("%s failed (%s), retrying", name, exc)
        return out


class ProcessPool:
    """`workers` spawned processes, kept for the executor's life (so each loads its model once)."""

    def __init__(self, workers: int, retries: int = 2):
        if int(workers) < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.workers, self.retries, self._pool = int(workers), _check_retries(retries), None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def run(self, fn: Callable, items: list[tuple], names: list[str], gpu: bool = False) -> list:
        results, attempts, pending = {}, Counter(), list(range(len(items)))
        while pending:
            pool = self._executor()
            futures = {pool.submit(fn, *items[i]): i for i in pending}
            pending = []
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except Exception as exc:
                    attempts[i] += 1
                    if attempts[i] > self.retries:
                        self.close()
                        raise UnitFailed(f"{names[i]} failed {attempts[i]} times: {type(exc).__name__}: {exc}") from exc
                    log.warning("%s failed (%s), retrying", names[i], exc)
                    pending.append(i)
                    if isinstance(exc, BrokenProcessPool):  # a worker died: every in-flight unit reruns
                        self._pool = None
        return [results[i] for i in range(len(items))]


class DaskExecutor:
    """Tasks on a distributed cluster: a killed worker's task reruns elsewhere (Dask's allowed-failures),
    a raising task is retried `retries` times; GPU tasks need a worker started with --resources GPU=1."""

    def __init__(self, client, retries: int = 2, timeout_s: float | None = None):
        self.client, self.retries, self.timeout_s = client, _check_retries(retries), timeout_s

    def run(self, fn: Callable, items: list[tuple], names: list[str], gpu: bool = False) -> list:
        from distributed import wait

        token = uuid.uuid4().hex[:8]
        futures = [self.client.submit(fn, *args, key=f"{name}-{token}", retries=self.retries, pure=False,
                                      resources={"GPU": 1} if gpu else None)
                   for args, name in zip(items, names)]
        done, not_done = wait(futures, timeout=self.timeout_s)
        if not_done:  # e.g. a GPU task on a cluster without GPU workers waits forever
            raise UnitFailed(f"{len(not_done)} tasks unfinished after {self.timeout_s} s "
                             f"(first: {names[futures.index(next(iter(not_done)))]})")
        for fut, name in zip(futures, names):
            if fut.status != "finished":
                exc = fut.exception()
                raise UnitFailed(f"{name} failed after {self.retries} retries: {type(exc).__name__}: {exc}") from exc
        return self.client.gather(futures)


def run_map_stage(store: ArtifactStore, prefix: str, *, stage: str, kernel: str, model: ModelSpec, source,
                  config_of: Callable[[dict], dict], counts_of: Callable[[dict], dict], shard_size: int,
                  batch_size: int, unit_size: int | None = None, executor=None, gpu: bool = False,
                  force: bool = False, torch_threads: int | None = None) -> StageManifest:
    """Run a single-stream map stage as units; returns its manifest (an existing one if finished)."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    executor = executor or InProcess()
    description = executor.run(describe_model, [(model, torch_threads)], [f"{stage}-describe"], gpu)[0]
    config, inputs = config_of(description), dict(source.inputs)
    if not force and (done := completed(store, prefix, config, inputs)) is not None:
        log.info("%s: %s already complete, skipped", stage, store.uri(prefix))
        return done
    if read_manifest(store, prefix) is not None:  # its outputs may be rewritten
        store.delete(f"{prefix}/{MANIFEST_NAME}")
    job = UnitJob(stage, prefix, store.root, store.storage_options, config, inputs, int(shard_size), int(batch_size),
                  source, model, kernel, force, torch_threads)
    units = plan_units(source.count(), shard_size, unit_size)
    records = executor.run(run_unit, [(job, u) for u in units], [f"{stage}-unit-{u.index:05d}" for u in units], gpu)
    return finish(store, job, units, records, counts_of(description))


def finish(store: ArtifactStore, job: UnitJob, units: list[WorkUnit], records: list[dict], extra: dict) -> StageManifest:
    """Check every shard is committed under this run's fingerprint, then write the manifest last."""
    from hddm_core.data.unit_runner import resolve

    stream = resolve(job.kernel).stream
    data, markers, kept, failures = [], [], 0, Counter()
    for index in [i for u in units for i in u.shards]:
        name = shard_name(stream, index, ".done.json")
        marker = store.read_json(f"{job.prefix}/{name}") if store.exists(f"{job.prefix}/{name}") else None
        if marker is None or marker.get("fingerprint") != job.fingerprint:
            raise RuntimeError(f"{job.stage}: shard {stream}/{index:05d} is not committed by this run")
        data += [shard_name(stream, index, suffix) for suffix in marker["files"]]
        markers.append(name)
        kept += len(marker["keys"])
        failures.update(marker.get("failures", {}))
    total = units[-1].stop if units else 0
    counts = {"samples": total, **extra, "streams": {stream: kept} if units else {},
              "resumed_samples": sum(_skipped_samples(r, job.shard_size) for r in records),
              "failures": dict(sorted(failures.items())), "workers": sorted({r["worker"] for r in records}),
              "units": [{"unit": r["unit"], "worker": r["worker"], "written": len(r["written"])} for r in records]}
    manifest = StageManifest(stage=job.stage, config=job.config, config_hash=hash_config(job.config),
                             inputs=job.inputs, outputs=describe_outputs(store, job.prefix, data + markers),
                             counts=counts)
    write_manifest(store, job.prefix, manifest)
    log.info("%s: wrote %s (%d units on %d workers, %d failed samples)", job.stage,
             store.uri(f"{job.prefix}/{MANIFEST_NAME}"), len(units), len(counts["workers"]), sum(failures.values()))
    return manifest


def _skipped_samples(record: dict, shard_size: int) -> int:
    return sum(min((i + 1) * shard_size, record["stop"]) - i * shard_size for i in record["skipped"])
