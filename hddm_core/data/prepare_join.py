"""Prepare as work units, step 2: the join, and the stage driver.

Stream s's shard i holds that stream's samples at ranks [i*S, (i+1)*S) in input order, the rule of
hddm_core.data.sharded_stage. The unit records say how many samples of each stream each unit holds,
in unit order (= input order), so the coordinator maps every output shard to the slices of the
pieces that hold its samples. A join task (one per output shard, on any worker) reads only those
slices, writes the shard through the single-process stage's own `flush_rows`, then its done-marker;
a shard already committed under this run's fingerprint with the same keys is skipped (resume).

Equality with `prepare_training_inputs` (same config, inputs, shard files, markers, manifest content
hash) follows: the batches are the same (prepare_units), float16 conversion is elementwise so it
commutes with stacking, and shard membership and order are the same rule over the same samples.
Tested byte for byte on a 2-worker Dask cluster, with a worker killed mid-stage
(tests/data/test_prepare_dask.py).
"""
from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np

from hddm_core.data.coordinator import InProcess
from hddm_core.data.prepare import (NULL_TEXT, STAGE, PrepareConfig, flush_rows, stage_config, stage_counts,
                                    stage_inputs)
from hddm_core.data.prepare_units import (PIECES, PrepareJob, describe_encoders, piece_key, plan_prepare_units,
                                          run_prepare_unit)
from hddm_core.data.sharded_stage import shard_name, write_shard
from hddm_core.data.unit_runner import ModelSpec
from hddm_core.manifests import (MANIFEST_NAME, StageManifest, completed, describe_outputs, hash_config, read_manifest,
                                 write_manifest)
from hddm_core.storage import ArtifactStore

log = logging.getLogger(__name__)


def join_plan(records: list[dict], shard_size: int) -> list[tuple[str, int, list[tuple[int, int, int]]]]:
    """(stream, shard index, [(unit, first row, stop row)]) for every output shard."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for r in records:  # unit order = input order
        for stream, n in r["streams"].items():
            spans.setdefault(stream, []).append((r["unit"], n))
    plan = []
    for stream in sorted(spans):
        slices, rank = [], 0  # rank: the stream's samples before the current unit
        for unit, n in spans[stream]:
            row = 0
            while row < n:  # split the unit's rows at shard boundaries
                index = (rank + row) // shard_size
                end = min(n, (index + 1) * shard_size - rank)
                if not slices or slices[-1][0] != index:
                    slices.append((index, []))
                slices[-1][1].append((unit, row, end))
                row = end
            rank += n
        plan += [(stream, index, parts) for index, parts in slices]
    return plan


def _read_rows(store: ArtifactStore, job: PrepareJob, stream: str, unit: int, lo: int, hi: int) -> list:
    """(key, record) rows [lo, hi) of a piece, in flush_rows' record format."""
    from safetensors import safe_open

    with store.local_path(piece_key(job.prefix, unit, stream)) as path, safe_open(path, framework="numpy") as f:
        meta, names = f.metadata(), set(f.keys())
        keys = json.loads(meta["keys"])[lo:hi]
        mean = f.get_slice("latents")[lo:hi]
        std = f.get_slice("latent_std")[lo:hi] if "latent_std" in names else [None] * len(keys)
        if "labels" in names:
            return [(k, (m, s, int(c))) for k, m, s, c in zip(keys, mean, std, f.get_slice("labels")[lo:hi])]
        ends = np.cumsum(f.get_tensor("lengths"))
        starts = ends - f.get_tensor("lengths")
        tokens = f.get_slice("tokens")[int(starts[lo]):int(ends[hi - 1])]
        base = int(starts[lo])
        texts = json.loads(meta["captions"])[lo:hi]
        return [(k, (m, s, tokens[int(a) - base:int(b) - base], t))
                for k, m, s, a, b, t in zip(keys, mean, std, starts[lo:hi], ends[lo:hi], texts)]


def join_shard(job: PrepareJob, stream: str, index: int, parts: list[tuple[int, int, int]]) -> dict:
    """Write one output shard from its piece slices (skipped if committed with the same keys)."""
    store = job.store()
    marker_key = f"{job.prefix}/{shard_name(stream, index, '.done.json')}"
    if not job.force and store.exists(marker_key):
        marker = store.read_json(marker_key)
        if marker.get("fingerprint") == job.fingerprint:
            from safetensors import safe_open

            keys = []
            for unit, lo, hi in parts:
                with store.local_path(piece_key(job.prefix, unit, stream)) as path, \
                        safe_open(path, framework="numpy") as f:
                    keys += json.loads(f.metadata()["keys"])[lo:hi]
            if marker["keys"] == keys:
                return {"stream": stream, "index": index, "files": marker["files"], "written": False}
    rows = [row for unit, lo, hi in parts for row in _read_rows(store, job, stream, unit, lo, hi)]
    marker = write_shard(store, job.prefix, job.fingerprint, stream, index, [k for k, _ in rows],
                         flush_rows(stream, rows))
    return {"stream": stream, "index": index, "files": marker["files"], "written": True}


def prepare_units(store: ArtifactStore, out_prefix: str, cluster_prefix: str, model: ModelSpec, source, *,
                  captions_prefix: str | None = None, config: PrepareConfig | None = None,
                  unit_size: int | None = None, executor=None, gpu: bool = False, force: bool = False,
                  torch_threads: int | None = None) -> StageManifest:
    """The prepare stage as work units: the same config, shards, bytes and manifest content hash as
    `prepare_training_inputs` whatever the executor and its workers. model: the encoders' spec
    (prepare_units.encoders_spec, built once per worker); source: an InputSource (hddm_core.data.units)."""
    from hddm_core.data.cluster import read_assignments
    from hddm_core.data.recaption import read_captions

    config = (config or PrepareConfig()).validate()
    executor = executor or InProcess()
    unit_size = int(unit_size) if unit_size is not None else config.batch_size * -(-config.shard_size // config.batch_size)
    inputs = stage_inputs(store, dict(source.inputs), cluster_prefix, captions_prefix)
    (description, null_text), = executor.run(describe_encoders, [(model, torch_threads)], ["prepare-describe"], gpu)
    full_config = stage_config(store, cluster_prefix, captions_prefix, description["latent"], description["text"],
                               config)
    if not force and (done := completed(store, out_prefix, full_config, inputs)) is not None:
        log.info("prepare: %s already complete, skipped", store.uri(out_prefix))
        return done
    if read_manifest(store, out_prefix) is not None:  # its outputs may be rewritten
        store.delete(f"{out_prefix}/{MANIFEST_NAME}")
    captions = read_captions(store, captions_prefix) if captions_prefix is not None else {}
    from hddm_core.data.holdout import select_holdout

    keys = source.keys()
    assignments = read_assignments(store, cluster_prefix)
    units, unclustered = plan_prepare_units(keys, assignments, captions, config.batch_size, unit_size,
                                            select_holdout(assignments, config.holdout()))
    job = PrepareJob(out_prefix, store.root, store.storage_options, full_config, inputs, config.batch_size,
                     config.shard_size, source, model, bool(captions), force, torch_threads)
    records = executor.run(run_prepare_unit, [(job, u) for u in units], [f"prepare-unit-{u.index:05d}" for u in units],
                           gpu)
    plan = join_plan(records, config.shard_size)
    joined = executor.run(join_shard, [(job, s, i, parts) for s, i, parts in plan],
                          [f"prepare-join-{s}-{i:05d}" for s, i, _ in plan])
    store.write_bytes(f"{out_prefix}/{NULL_TEXT}", null_text)
    manifest = _finish(store, job, len(keys), unclustered, records, joined)
    store.delete(f"{out_prefix}/{PIECES}")
    return manifest


def _finish(store: ArtifactStore, job: PrepareJob, seen: int, unclustered: int, records: list[dict],
            joined: list[dict]) -> StageManifest:
    streams = Counter()
    for r in records:
        streams.update(r["streams"])
    streams = dict(sorted(streams.items()))
    by_stream = sorted(joined, key=lambda j: (j["stream"], j["index"]))
    outputs = [shard_name(j["stream"], j["index"], suffix) for j in by_stream for suffix in j["files"]]
    outputs += [shard_name(j["stream"], j["index"], ".done.json") for j in by_stream] + [NULL_TEXT]
    failures = Counter()
    for r in records:
        failures.update(r["failures"])
    stats = {"unclustered": unclustered, "caption_fallback": sum(r["caption_fallback"] for r in records)}
    counts = {**stage_counts(seen, stats, streams, job.config["n_clusters"]), "streams": streams,
              "resumed_samples": sum(r["samples"] for r in records if r["resumed"]),
              "failures": dict(sorted(failures.items())), "workers": sorted({r["worker"] for r in records}),
              "units": [{"unit": r["unit"], "worker": r["worker"], "resumed": r["resumed"]} for r in records],
              "joined_shards": sum(j["written"] for j in joined)}
    manifest = StageManifest(stage=STAGE, config=job.config, config_hash=hash_config(job.config), inputs=job.inputs,
                             outputs=describe_outputs(store, job.prefix, outputs), counts=counts)
    write_manifest(store, job.prefix, manifest)
    log.info("prepare: wrote %s (%d units on %d workers, %d shards, %d failed samples)",
             store.uri(f"{job.prefix}/{MANIFEST_NAME}"), len(records), len(counts["workers"]), len(joined),
             sum(failures.values()))
    return manifest
