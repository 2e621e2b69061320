"""What a worker runs for one work unit of a map stage (the same code on Dask, a process pool or in-process).

- The model comes from a per-process cache keyed by its description (`ModelSpec`): a worker loads
  it once and reuses it for every unit it runs.
- Batches never cross a shard boundary, so a shard's bytes depend only on its own samples (and
  equal the single-process stage's whenever batch_size divides shard_size, the defaults).
- A shard already committed under this run's fingerprint is skipped: a unit rerun after its worker
  was killed rewrites only what had no done-marker, so nothing is lost or duplicated.
- A bad sample (it does not decode, or the model refuses it with ValueError) is left out of its
  shard and counted by reason; any other exception is an infrastructure failure and fails the
  unit (the executor retries it a bounded number of times).
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from hddm_core.data.sharded_stage import shard_name, stage_fingerprint, write_shard
from hddm_core.data.units import WorkUnit
from hddm_core.storage import ArtifactStore

log = logging.getLogger(__name__)

UNITS_DIR = "_units"  # per-unit records (worker, failures); not outputs: the manifest never names them


def _sample_errors() -> tuple:
    from PIL import Image, UnidentifiedImageError

    return (ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


def resolve(ref: str):
    """'package.module:attr[.attr]' -> the object (model factories and kernels travel as names)."""
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise ValueError(f"expected 'module:attribute', got {ref!r}")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ModelSpec:
    """How a worker builds the stage's model: a factory named 'module:callable' and its JSON kwargs."""

    factory: str
    kwargs: dict = field(default_factory=dict)

    @property
    def cache_key(self) -> str:
        return json.dumps({"factory": self.factory, "kwargs": self.kwargs}, sort_keys=True)


_MODELS: dict[str, Any] = {}
LOADS: Counter = Counter()  # model loads in this process, by cache key (tests check "once per worker")


def load_model(spec: ModelSpec, torch_threads: int | None = None):
    if torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))
    if spec.cache_key not in _MODELS:
        _MODELS[spec.cache_key] = resolve(spec.factory)(**spec.kwargs)
        LOADS[spec.cache_key] += 1
        log.info("loaded %s in process %d", spec.factory, os.getpid())
    return _MODELS[spec.cache_key]


def describe_model(spec: ModelSpec, torch_threads: int | None = None) -> dict:
    """The model's description (it goes into the stage config); loads it into this worker's cache."""
    return load_model(spec, torch_threads).describe()


@dataclass(frozen=True)
class UnitKernel:
    """A stage's per-batch work: compute(model, samples) -> records; flush([(key, record)]) -> files."""

    stream: str
    compute: Callable[[Any, list], list]
    flush: Callable[[list], dict[str, bytes]]


class JobStore:
    """What every stage job derives from its fields: the run fingerprint and the artifact store."""

    @property
    def fingerprint(self) -> str:
        return stage_fingerprint(self.config, self.inputs)

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.store_root, self.storage_options)


@dataclass
class UnitJob(JobStore):
    """Everything a worker needs for any unit of one stage run (picklable)."""

    stage: str
    prefix: str
    store_root: str
    storage_options: dict | None
    config: dict
    inputs: dict
    shard_size: int
    batch_size: int
    source: Any  # hddm_core.data.units.InputSource
    model: ModelSpec
    kernel: str  # 'module:attr' of a UnitKernel
    force: bool = False
    torch_threads: int | None = None



def worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def _committed(store: ArtifactStore, job: UnitJob, stream: str, index: int, keys: list[str]) -> dict | None:
    """The shard's done-marker if it is committed under this run's fingerprint, else None."""
    marker_key = f"{job.prefix}/{shard_name(stream, index, '.done.json')}"
    if job.force or not store.exists(marker_key):
        return None
    marker = store.read_json(marker_key)
    if marker.get("fingerprint") != job.fingerprint:
        return None
    kept = iter(keys)
    if not all(any(k == m for k in kept) for m in marker["keys"]):  # marker keys: an ordered subset of the input
        raise RuntimeError(f"{job.stage}: committed shard {stream}/{index:05d} names keys not in its input range: "
                           "the input changed order under the same fingerprint")
    return marker


def _compute(kernel: UnitKernel, model, samples: list, failures: Counter) -> list[tuple[str, Any]]:
    """(key, record) per sample that the model accepts; a refused batch is redone sample by sample."""
    errors = _sample_errors()
    try:
        records = kernel.compute(model, samples)
        if len(records) != len(samples):
            raise RuntimeError(f"compute returned {len(records)} results for {len(samples)} samples")
        return [(s.key, r) for s, r in zip(samples, records)]
    except errors:
        if len(samples) == 1:
            raise
    out = []
    for s in samples:
        try:
            out += _compute(kernel, model, [s], failures)
        except errors as exc:
            failures[f"compute: {type(exc).__name__}"] += 1
            log.warning("sample %s refused by the model: %s", s.key, exc)
    return out


def run_unit(job: UnitJob, unit: WorkUnit) -> dict:
    """Compute and commit every uncommitted shard of `unit`; returns (and stores) the unit's record."""
    store, kernel = job.store(), resolve(job.kernel)
    errors = _sample_errors()
    failures, written, skipped, samples = Counter(), [], [], 0
    raws = iter(job.source.iter_range(unit.start, unit.stop))
    model = None
    for index in unit.shards:
        lo, hi = index * job.shard_size, min((index + 1) * job.shard_size, unit.stop)
        chunk = [next(raws) for _ in range(hi - lo)]
        samples += len(chunk)
        marker = _committed(store, job, kernel.stream, index, [r.key for r in chunk])
        if marker is not None:
            failures.update(marker.get("failures", {}))
            skipped.append(index)
            continue
        decoded, shard_failures = [], Counter()
        for raw in chunk:
            try:
                decoded.append(raw.decode())
            except errors + (OSError,) as exc:  # bytes in memory: OSError here is a broken image
                shard_failures[f"decode: {type(exc).__name__}"] += 1
                log.warning("sample %s does not decode: %s", raw.key, exc)
        model = model or load_model(job.model, job.torch_threads)
        rows = []
        for b in range(0, len(decoded), job.batch_size):
            rows += _compute(kernel, model, decoded[b:b + job.batch_size], shard_failures)
        write_shard(store, job.prefix, job.fingerprint, kernel.stream, index, [k for k, _ in rows],
                    kernel.flush(rows) if rows else {}, shard_failures)
        failures.update(shard_failures)
        written.append(index)
    record = {"unit": unit.index, "start": unit.start, "stop": unit.stop, "worker": worker_name(),
              "fingerprint": job.fingerprint, "samples": samples, "written": written, "skipped": skipped,
              "failures": dict(failures)}
    store.write_json(f"{job.prefix}/{UNITS_DIR}/{unit.index:05d}.json", record)
    return record
