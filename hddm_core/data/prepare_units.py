"""Prepare as work units, step 1: the expensive per-sample work (latents, token embeddings) as units.

One input sample feeds its cluster's stream and the router stream, whose shard boundaries do not
line up, so a unit cannot be a run of whole output shards as in embed. Instead:

- The coordinator lists every input key in order (no image read; `InputSource.keys`) and keeps the
  routed samples (those the cluster stage assigned), in input order. The single-process stage
  (`prepare_training_inputs`) encodes them in consecutive batches of `batch_size` routed samples;
  a unit here is a run of `unit_size` routed samples, a multiple of `batch_size`, so every batch is
  exactly a single-process batch and each sample's bytes are the same whatever the units.
- A unit decodes and encodes its samples and writes one piece per stream it touches,
  `_pieces/<unit>/<stream>.safetensors` (its samples of that stream in input order, already in
  float16), then `_pieces/<unit>.json` last (its commit record). A unit rerun after its worker was
  killed finds a committed record under this run's fingerprint and returns it.
- hddm_core.data.prepare_join then writes the final shards from the pieces (a cheap join).

A bad sample (does not decode, or the encoders refuse it with ValueError) is left out and counted
by reason; a float16 overflow (a wrong latent scale) fails the unit (OverflowError).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from hddm_core.data.holdout import holdout_stream
from hddm_core.data.prepare import ROUTER_STREAM, cluster_stream, encode_batch, null_text_bytes
from hddm_core.data.unit_runner import JobStore, ModelSpec, UnitKernel, _compute, _sample_errors, load_model, resolve, worker_name
from hddm_core.storage import ArtifactStore

log = logging.getLogger(__name__)

PIECES = "_pieces"  # unit pieces and records: not outputs (the manifest never names them); deleted at the end


class PrepareEncoders:
    """The stage's two models, built on a worker from their specs ({"factory": ..., "kwargs": ...})."""

    def __init__(self, latent: dict, text: dict):
        self.latent_space = resolve(latent["factory"])(**latent.get("kwargs", {}))
        self.text_encoder = resolve(text["factory"])(**text.get("kwargs", {}))

    def describe(self) -> dict:
        return {"latent": self.latent_space.describe(), "text": self.text_encoder.describe()}


def encoders_spec(latent_factory: str, latent_kwargs: dict, text_factory: str, text_kwargs: dict) -> ModelSpec:
    return ModelSpec(f"{__name__}:PrepareEncoders", {"latent": {"factory": latent_factory, "kwargs": latent_kwargs},
                                                     "text": {"factory": text_factory, "kwargs": text_kwargs}})


def describe_encoders(spec: ModelSpec, torch_threads: int | None = None) -> tuple[dict, bytes]:
    """(description, null-caption file) from a worker: the coordinator never loads the models."""
    encoders = load_model(spec, torch_threads)
    return encoders.describe(), null_text_bytes(encoders.text_encoder)


@dataclass(frozen=True)
class PrepareUnit:
    """A run of routed samples [start, stop) in routed order, with what the worker needs of each."""

    index: int
    start: int
    stop: int
    positions: tuple[int, ...]  # input position of each sample
    keys: tuple[str, ...]
    labels: tuple[int, ...]  # top-level cluster
    captions: tuple[str | None, ...]  # the recaption stage's caption, None = keep the original
    held: tuple[bool, ...] = ()  # in the held-out split (hddm_core.data.holdout); () = none held out


@dataclass
class PrepareJob(JobStore):
    """Everything a worker needs for any unit or join task of one prepare run (picklable)."""

    prefix: str
    store_root: str
    storage_options: dict | None
    config: dict
    inputs: dict
    batch_size: int
    shard_size: int
    source: Any  # hddm_core.data.units.InputSource
    model: ModelSpec
    captions_given: bool  # a recaption stage is used: a sample without a new caption is a fallback
    force: bool = False
    torch_threads: int | None = None



def plan_prepare_units(keys: list[str], assignments: dict, captions: dict, batch_size: int,
                       unit_size: int, held: dict | None = None) -> tuple[list[PrepareUnit], int]:
    """(units over the routed samples, number of unclustered input samples); held: the held-out keys
    (encoded in the same batches as the single-process stage, written to their holdout stream only)."""
    if int(unit_size) < 1 or int(unit_size) % int(batch_size):
        raise ValueError(f"unit_size must be a positive multiple of batch_size={batch_size}, got {unit_size!r}")
    routed = [(p, k) for p, k in enumerate(keys) if k in assignments]
    units = []
    for i, start in enumerate(range(0, len(routed), int(unit_size))):
        part = routed[start:start + int(unit_size)]
        units.append(PrepareUnit(i, start, start + len(part), tuple(p for p, _ in part), tuple(k for _, k in part),
                                 tuple(int(assignments[k]) for _, k in part),
                                 tuple(captions.get(k) if captions else None for _, k in part),
                                 tuple(k in held for _, k in part) if held else ()))
    return units, len(keys) - len(routed)


def _encode(encoders: PrepareEncoders, samples: list) -> list:
    return encode_batch(encoders.latent_space, encoders.text_encoder, [s.image for s in samples],
                        [s.caption for s in samples])


KERNEL = UnitKernel(stream="prepare", compute=_encode, flush=lambda rows: {})


def _f16(name: str, arrays: list) -> np.ndarray:
    out = np.ascontiguousarray(np.stack(arrays), dtype=np.float16)
    if not np.isfinite(out).all():
        raise OverflowError(f"{name} overflow float16; check the latent scale")
    return out


def _piece(stream: str, rows: list) -> bytes:
    """A stream's samples of one unit: latents (and std) [n, ...] f16; a cluster stream adds the
    tokens of every sample concatenated [sum L_i, D] f16 with their lengths, the router the labels."""
    from safetensors.numpy import save

    tensors = {"latents": _f16("latents", [r[0] for _, r in rows])}
    if rows[0][1][1] is not None:
        tensors["latent_std"] = _f16("latent_std", [r[1] for _, r in rows])
    meta = {"keys": json.dumps([k for k, _ in rows])}
    if stream == ROUTER_STREAM:
        tensors["labels"] = np.asarray([r[2] for _, r in rows], np.int64)
    else:
        tensors["tokens"] = np.ascontiguousarray(np.concatenate([r[2] for _, r in rows]), dtype=np.float16)
        tensors["lengths"] = np.asarray([len(r[2]) for _, r in rows], np.int64)
        meta["captions"] = json.dumps([r[3] for _, r in rows])
    return save(tensors, metadata=meta)


def piece_key(prefix: str, unit: int, stream: str) -> str:
    return f"{prefix}/{PIECES}/{unit:05d}/{stream}.safetensors"


def record_key(prefix: str, unit: int) -> str:
    return f"{prefix}/{PIECES}/{unit:05d}.json"


def _committed(store: ArtifactStore, job: PrepareJob, unit: PrepareUnit) -> dict | None:
    key = record_key(job.prefix, unit.index)
    if job.force or not store.exists(key):
        return None
    record = store.read_json(key)
    same = record.get("fingerprint") == job.fingerprint and (record["start"], record["stop"]) == (unit.start, unit.stop)
    return record if same else None


def _decode(job: PrepareJob, unit: PrepareUnit, failures: Counter) -> list:
    """The unit's samples decoded (None where a sample does not decode), captions applied."""
    errors = _sample_errors() + (OSError,)  # bytes in memory: OSError here is a broken image
    where = {p: i for i, p in enumerate(unit.positions)}
    out = [None] * len(unit.keys)
    lo, hi = unit.positions[0], unit.positions[-1] + 1
    for position, raw in zip(range(lo, hi), job.source.iter_range(lo, hi)):
        i = where.get(position)
        if i is None:
            continue
        if raw.key != unit.keys[i]:
            raise RuntimeError(f"prepare: input position {position} holds {raw.key!r}, the plan says "
                               f"{unit.keys[i]!r}: the input changed under the run")
        try:
            sample = raw.decode()
        except errors as exc:
            failures[f"decode: {type(exc).__name__}"] += 1
            log.warning("sample %s does not decode: %s", raw.key, exc)
            continue
        caption = unit.captions[i]
        out[i] = sample if caption is None else dataclasses.replace(sample, caption=caption)
    return out


def run_prepare_unit(job: PrepareJob, unit: PrepareUnit) -> dict:
    """Encode the unit's samples in the single-process batches; write its pieces, then its record."""
    store = job.store()
    if (record := _committed(store, job, unit)) is not None:
        return {**record, "resumed": True}
    failures = Counter()
    samples = _decode(job, unit, failures)
    fallback = sum(1 for s, c in zip(samples, unit.captions) if s is not None and c is None) if job.captions_given else 0
    encoders = load_model(job.model, job.torch_threads)
    results = {}
    for b in range(0, len(samples), job.batch_size):  # the batches of the single-process stage
        batch = [s for s in samples[b:b + job.batch_size] if s is not None]
        if batch:
            results.update(_compute(KERNEL, encoders, batch, failures))
    streams: dict[str, list] = {}
    held = unit.held or (False,) * len(unit.keys)
    for key, label, out in zip(unit.keys, unit.labels, held):
        if key in results and out:
            streams.setdefault(holdout_stream(label), []).append((key, results[key]))
        elif key in results:
            mean, std, tokens, text = results[key]
            streams.setdefault(cluster_stream(label), []).append((key, (mean, std, tokens, text)))
            streams.setdefault(ROUTER_STREAM, []).append((key, (mean, std, label)))
    for stream, rows in streams.items():
        store.write_bytes(piece_key(job.prefix, unit.index, stream), _piece(stream, rows))
    record = {"unit": unit.index, "start": unit.start, "stop": unit.stop, "fingerprint": job.fingerprint,
              "worker": worker_name(), "samples": len(unit.keys), "caption_fallback": fallback,
              "streams": {s: len(rows) for s, rows in sorted(streams.items())}, "failures": dict(failures)}
    store.write_json(record_key(job.prefix, unit.index), record)  # the commit: written last
    return {**record, "resumed": False}
