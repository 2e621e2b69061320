"""Resumable, sharded stage output shared by recaption, embed and prepare.

A stage streams its input samples in a deterministic order and routes each one to a named stream
(one stream for recaption/embed; one per cluster plus the router stream for prepare). Stream s's
shard i holds that stream's samples at positions [i*S, (i+1)*S): membership is fixed by the input
order, so a killed run resumes by skipping every sample whose shard is already committed, and no
sample is duplicated or lost.

Per shard: data files first (atomic writes), then `<stream>/<index>.done.json` naming the run
fingerprint (config + inputs hash) and the shard's keys. A marker from another fingerprint is
ignored (its shard is rewritten). The manifest is deleted when a run starts and written last.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from hddm_core.manifests import StageManifest, completed, describe_outputs, hash_config, read_manifest, write_manifest, MANIFEST_NAME
from hddm_core.storage import ArtifactStore

log = logging.getLogger(__name__)


def shard_name(stream: str, index: int, suffix: str) -> str:
    return f"{stream}/{index:05d}{suffix}"


def write_shard(store: ArtifactStore, prefix: str, fingerprint: str, stream: str, index: int, keys: list[str],
                files: dict[str, bytes], failures: dict[str, int] | None = None) -> dict:
    """Commit one shard: its data files (atomic writes), then its done-marker, written last.
    failures (samples left out, by reason) is recorded in the marker only when there are any."""
    for suffix, data in files.items():
        store.write_bytes(f"{prefix}/{shard_name(stream, index, suffix)}", data)
    marker = {"fingerprint": fingerprint, "keys": keys, "files": sorted(files)}
    if failures:
        marker["failures"] = dict(sorted(failures.items()))
    store.write_json(f"{prefix}/{shard_name(stream, index, '.done.json')}", marker)
    return marker


def stage_fingerprint(config: dict, inputs: dict) -> str:
    """What a shard's done-marker names: the run's config and inputs."""
    return hash_config({"config": hash_config(config), "inputs": inputs})


@dataclass
class _Stream:
    position: int = 0  # samples of this stream seen so far in this run's input order
    buffer: list = field(default_factory=list)
    buffer_index: int = 0
    pending: list[int] = field(default_factory=list)  # shard index of each claimed, not yet added sample
    shards: list[int] = field(default_factory=list)


class ShardedStage:
    """Bookkeeping of one run of a sharded stage (not thread-safe; one writer per prefix)."""

    def __init__(self, store: ArtifactStore, prefix: str, stage: str, config: dict, inputs: dict[str, str],
                 shard_size: int, force: bool = False):
        if int(shard_size) < 1:
            raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
        self.store, self.prefix, self.stage = store, prefix.strip("/"), stage
        self.config, self.inputs, self.shard_size, self.force = config, inputs, int(shard_size), force
        self.fingerprint = stage_fingerprint(config, inputs)
        self.streams: dict[str, _Stream] = {}
        self.skipped_samples = 0
        self._markers: dict[str, dict] = {}

    # -- whole-stage skip --------------------------------------------------------------------
    def already_completed(self) -> StageManifest | None:
        if self.force:
            return None
        return completed(self.store, self.prefix, self.config, self.inputs)

    def begin(self) -> None:
        """Invalidate any previous manifest (its outputs may be rewritten) and load shard markers."""
        if read_manifest(self.store, self.prefix) is not None:
            self.store.delete(f"{self.prefix}/{MANIFEST_NAME}")
        if self.force:
            return
        for key in self.store.list(self.prefix):
            if key.endswith(".done.json"):
                marker = self.store.read_json(key)
                if marker.get("fingerprint") == self.fingerprint:
                    self._markers[key[len(self.prefix) + 1:]] = marker

    # -- routing -----------------------------------------------------------------------------
    def _stream(self, name: str) -> _Stream:
        if "/" in name or not name:
            raise ValueError(f"stream name must be a non-empty name without '/', got {name!r}")
        return self.streams.setdefault(name, _Stream())

    def claim(self, stream: str, key: str) -> bool:
        """Advance `stream` by one sample; True if the sample must be computed (its shard is not
        committed), in which case `add` must follow for it, in claim order."""
        s = self._stream(stream)
        index, row = divmod(s.position, self.shard_size)
        s.position += 1
        marker = self._markers.get(shard_name(stream, index, ".done.json"))
        if marker is None:
            s.pending.append(index)
            return True
        if row >= len(marker["keys"]) or marker["keys"][row] != key:
            raise RuntimeError(f"{self.stage}: committed shard {stream}/{index:05d} expected key "
                               f"{marker['keys'][row] if row < len(marker['keys']) else None!r} at row {row}, "
                               f"input gave {key!r}: the input changed order under the same fingerprint")
        if index not in s.shards:
            s.shards.append(index)
        self.skipped_samples += 1
        return False

    def add(self, stream: str, key: str, record: Any, flush: Callable[[str, int, list], dict[str, bytes]]) -> None:
        """Buffer a claimed sample's record (in claim order); write its shard via flush once full."""
        s = self._stream(stream)
        if not s.pending:
            raise RuntimeError(f"{self.stage}: add({stream!r}, {key!r}) without a matching claim")
        index = s.pending.pop(0)
        if s.buffer and s.buffer_index != index:
            self._commit(stream, flush)
        s.buffer_index = index
        s.buffer.append((key, record))
        if len(s.buffer) == self.shard_size:
            self._commit(stream, flush)

    def close(self, flush: Callable[[str, int, list], dict[str, bytes]]) -> None:
        for name, s in self.streams.items():
            if s.pending:
                raise RuntimeError(f"{self.stage}: stream {name!r} has {len(s.pending)} claimed samples never added")
            if s.buffer:
                self._commit(name, flush)

    def _commit(self, stream: str, flush: Callable[[str, int, list], dict[str, bytes]]) -> None:
        s = self.streams[stream]
        index = s.buffer_index
        keys = [k for k, _ in s.buffer]
        marker = write_shard(self.store, self.prefix, self.fingerprint, stream, index, keys,
                             flush(stream, index, s.buffer))
        self._markers[shard_name(stream, index, ".done.json")] = marker
        s.buffer = []
        if index not in s.shards:
            s.shards.append(index)

    # -- finishing ---------------------------------------------------------------------------
    def shard_files(self, stream: str) -> list[str]:
        """Committed data files of a stream, in shard order (relative to the prefix)."""
        out = []
        for index in sorted(self.streams[stream].shards) if stream in self.streams else []:
            marker = self._markers[shard_name(stream, index, ".done.json")]
            out += [shard_name(stream, index, suffix) for suffix in marker["files"]]
        return out

    def stream_counts(self) -> dict[str, int]:
        return {name: s.position for name, s in sorted(self.streams.items())}

    def finish(self, counts: dict, extra_outputs: list[str] = ()) -> StageManifest:
        """Check every stream is complete, then write the manifest last."""
        for name, s in self.streams.items():
            if s.buffer:
                raise RuntimeError(f"{self.stage}: stream {name!r} has unflushed samples; call close() first")
            expected = -(-s.position // self.shard_size)
            if sorted(s.shards) != list(range(expected)):
                raise RuntimeError(f"{self.stage}: stream {name!r} has shards {sorted(s.shards)}, expected 0..{expected - 1}")
        outputs = [f for name in sorted(self.streams) for f in self.shard_files(name)]
        outputs += [shard_name(name, i, ".done.json") for name in sorted(self.streams) for i in sorted(self.streams[name].shards)]
        outputs += list(extra_outputs)
        manifest = StageManifest(stage=self.stage, config=self.config, config_hash=hash_config(self.config),
                                 inputs=self.inputs, outputs=describe_outputs(self.store, self.prefix, outputs),
                                 counts={**counts, "streams": self.stream_counts(),
                                         "resumed_samples": self.skipped_samples})
        write_manifest(self.store, self.prefix, manifest)
        log.info("%s: wrote %s (%d outputs)", self.stage, self.store.uri(f"{self.prefix}/{MANIFEST_NAME}"), len(outputs))
        return manifest


def manifest_stream_files(manifest: StageManifest, stream: str, suffix: str) -> list[str]:
    """Data files of one stream named by a finished stage's manifest, in shard order."""
    return sorted(k for k in manifest.outputs if k.startswith(f"{stream}/") and k.endswith(suffix))


def require_manifest(store: ArtifactStore, prefix: str, stage: str) -> StageManifest:
    manifest = read_manifest(store, prefix)
    if manifest is None:
        raise FileNotFoundError(f"no {stage} manifest under {store.uri(prefix)}: run the {stage} stage first")
    if manifest.stage != stage:
        raise ValueError(f"{store.uri(prefix)} holds a {manifest.stage!r} stage, expected {stage!r}")
    return manifest


def sample_source(store: ArtifactStore, source_prefix: str | None = None, samples=None,
                  input_hash: str | None = None):
    """(iterable of Sample, inputs dict) from a download stage prefix or an explicit iterable.

    An explicit iterable needs `input_hash` (what identifies its content) so reruns can be skipped.
    """
    if (source_prefix is None) == (samples is None):
        raise ValueError("give exactly one of source_prefix (a download stage prefix) or samples (an iterable)")
    if source_prefix is not None:
        from hddm_core.data.shards import iter_download_samples

        manifest = read_manifest(store, source_prefix)
        if manifest is None:
            raise FileNotFoundError(f"no stage manifest under {store.uri(source_prefix)}: run the download stage first")
        return iter_download_samples(store, source_prefix), {"samples": manifest.content_hash}
    if not input_hash:
        raise ValueError("samples given as an iterable need input_hash (a content hash of those samples)")
    return samples, {"samples": input_hash}


def run_batched(stage: ShardedStage, samples: Iterable, route: Callable[[Any], list[str]],
                compute: Callable[[list], list], record: Callable[[str, Any, Any], Any],
                flush: Callable[[str, int, list], dict[str, bytes]], batch_size: int, desc: str,
                total: int | None = None) -> int:
    """Stream samples through compute in batches, skipping samples whose shards are committed.

    route(sample) -> stream names; compute(samples) -> one result per sample;
    record(stream, sample, result) -> what that stream's shard stores. Returns samples seen.
    """
    from tqdm.auto import tqdm

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    pending: list[tuple[Any, list[str]]] = []
    seen = 0

    def run_pending() -> None:
        results = compute([sample for sample, _ in pending])
        if len(results) != len(pending):
            raise RuntimeError(f"{stage.stage}: compute returned {len(results)} results for {len(pending)} samples")
        for (sample, streams), result in zip(pending, results):
            for name in streams:
                stage.add(name, sample.key, record(name, sample, result), flush)
        pending.clear()

    for sample in tqdm(samples, desc=desc, total=total, unit="img", mininterval=5):
        seen += 1
        needed = [name for name in route(sample) if stage.claim(name, sample.key)]
        if needed:
            pending.append((sample, needed))
        if len(pending) >= batch_size:
            run_pending()
    if pending:
        run_pending()
    stage.close(flush)
    return seen
