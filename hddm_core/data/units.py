"""Work units of a map stage: ranges of the deterministic input order, aligned to output shards.

A single-stream map stage (embed, recaption) writes shard i from the input samples at positions
[i*S, (i+1)*S) (hddm_core.data.sharded_stage). A unit is a run of whole shards, so units never share
a shard: any number of workers, in any order, any number of times, write the same files, and the
stage's output is the same whatever the number of workers.

An input source is addressable by position: `ListSource` (samples in memory, for tests and small
runs) and `DownloadSource` (the download stage's tar shards; per-tar sample counts come from the
img2dataset stats files the download manifest names, so planning reads no image).
"""
from __future__ import annotations

import logging
import tarfile
from dataclasses import dataclass
from typing import Iterator, Protocol

from hddm_core.storage import ArtifactStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkUnit:
    index: int
    start: int  # first input position (inclusive)
    stop: int  # last input position (exclusive)
    shards: tuple[int, ...]  # output shard indices this unit writes

    def __post_init__(self):
        if not 0 <= self.start < self.stop:
            raise ValueError(f"unit {self.index}: need 0 <= start < stop, got [{self.start}, {self.stop})")


def plan_units(total: int, shard_size: int, unit_size: int | None = None) -> list[WorkUnit]:
    """Units of `unit_size` samples (a multiple of shard_size; default one shard) covering [0, total)."""
    shard_size = int(shard_size)
    if shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    unit_size = shard_size if unit_size is None else int(unit_size)
    if unit_size < 1 or unit_size % shard_size:
        raise ValueError(f"unit_size must be a positive multiple of shard_size={shard_size}, got {unit_size!r}")
    if int(total) < 0:
        raise ValueError(f"total must be >= 0, got {total!r}")
    units = []
    for i, start in enumerate(range(0, int(total), unit_size)):
        stop = min(start + unit_size, int(total))
        first = start // shard_size
        units.append(WorkUnit(i, start, stop, tuple(range(first, first + -(-(stop - start) // shard_size)))))
    return units


class RawSample(Protocol):
    key: str

    def decode(self):  # -> hddm_core.data.shards.Sample; raises for a bad sample
        ...


@dataclass
class _Decoded:
    """A sample already decoded (ListSource)."""

    sample: object

    @property
    def key(self) -> str:
        return self.sample.key

    def decode(self):
        return self.sample


@dataclass
class _TarMembers:
    """One tar sample's members, decoded only when asked (a bad image fails that sample alone)."""

    key: str
    members: dict

    def decode(self):
        from hddm_core.data.shards import _sample_from_members

        return _sample_from_members(self.key, self.members)


class InputSource(Protocol):
    inputs: dict  # what the stage records as its input (content hash)

    def count(self) -> int: ...

    def iter_range(self, start: int, stop: int) -> Iterator[RawSample]: ...

    def keys(self) -> list[str]: ...  # every sample's key in input order, reading no image


class ListSource:
    """Samples in memory (picklable: shipped to each worker with the unit's job)."""

    def __init__(self, samples: list, input_hash: str):
        if not input_hash:
            raise ValueError("samples given as a list need input_hash (a content hash of those samples)")
        self.samples, self.inputs = list(samples), {"samples": input_hash}

    def count(self) -> int:
        return len(self.samples)

    def iter_range(self, start: int, stop: int) -> Iterator[RawSample]:
        return (_Decoded(s) for s in self.samples[start:stop])

    def keys(self) -> list[str]:
        return [s.key for s in self.samples]


def _tar_keys(fileobj) -> list[str]:
    """Sample keys of one webdataset tar from its headers alone (a seekable file: data is skipped)."""
    keys = []
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        for info in tar:
            if info.isfile():
                key = info.name.rsplit("/", 1)[-1].partition(".")[0]
                if not keys or keys[-1] != key:  # members of one sample are adjacent (as _tar_members groups)
                    keys.append(key)
    return keys


def _tar_members(fileobj) -> Iterator[_TarMembers]:
    current, members = None, {}
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, ext = info.name.rsplit("/", 1)[-1].partition(".")
            if key != current and current is not None and members:
                yield _TarMembers(current, members)
                members = {}
            current = key
            members[ext.lower()] = tar.extractfile(info).read()
    if current is not None and members:
        yield _TarMembers(current, members)


class DownloadSource:
    """The download stage's samples in manifest order, addressable by position."""

    def __init__(self, store_root: str, storage_options: dict | None, prefix: str):
        from hddm_core.manifests import read_manifest

        self.store_root, self.storage_options, self.prefix = store_root, storage_options, prefix
        store = self._store()
        manifest = read_manifest(store, prefix)
        if manifest is None:
            raise FileNotFoundError(f"no stage manifest under {store.uri(prefix)}: run the download stage first")
        self.inputs = {"samples": manifest.content_hash}
        self.tars = sorted(k for k in manifest.outputs if k.endswith(".tar"))
        self.lengths = []
        for tar in self.tars:
            stats = tar[:-len(".tar")] + "_stats.json"
            if stats not in manifest.outputs:
                raise ValueError(f"{store.uri(prefix)}: manifest names {tar} but not {stats}; cannot plan units")
            self.lengths.append(int(store.read_json(f"{prefix}/{stats}").get("successes", 0)))

    def _store(self) -> ArtifactStore:
        return ArtifactStore(self.store_root, self.storage_options)

    def count(self) -> int:
        return sum(self.lengths)

    def keys(self) -> list[str]:
        store, keys = self._store(), []
        for tar, n in zip(self.tars, self.lengths):
            with store.fs.open(store.path(f"{self.prefix}/{tar}"), "rb") as f:
                part = _tar_keys(f)
            if len(part) != n:
                raise ValueError(f"{store.uri(f'{self.prefix}/{tar}')} holds {len(part)} samples, its stats say {n}")
            keys += part
        return keys

    def iter_range(self, start: int, stop: int) -> Iterator[RawSample]:
        store, offset = self._store(), 0
        for tar, n in zip(self.tars, self.lengths):
            if offset + n > start and offset < stop:
                with store.fs.open(store.path(f"{self.prefix}/{tar}"), "rb") as f:
                    seen = 0
                    for position, raw in enumerate(_tar_members(f), start=offset):
                        seen += 1
                        if start <= position < stop:
                            yield raw
                        elif position >= stop:
                            break
                    else:
                        if seen != n:
                            raise ValueError(f"{store.uri(f'{self.prefix}/{tar}')} holds {seen} samples, "
                                             f"its stats say {n}")
            offset += n
            if offset >= stop:
                return

