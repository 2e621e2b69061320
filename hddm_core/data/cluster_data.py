"""Readers the trainers use: one cluster's training shards, and the router's shards.

Sample order is a pure function of (seed, epoch): shards are shuffled, then rows within each shard
(a shard-blocked shuffle, so a reader holds one shard in memory at a time, at any scale). A trainer
that stopped at (epoch, position) resumes with `iter_batches(..., start_epoch=epoch,
start_position=position)` and sees exactly the samples it would have seen.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from typing import Iterator

import numpy as np
import torch

from hddm_core.storage import ArtifactStore
from hddm_core.data.prepare import NULL_TEXT, ROUTER_STREAM, STAGE, cluster_stream
from hddm_core.data.sharded_stage import require_manifest


def epoch_order(shard_sizes: list[int], seed: int, epoch: int) -> np.ndarray:
    """Global sample indices of one epoch: shards in a shuffled order, rows shuffled within each."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    rng = np.random.default_rng([int(seed), int(epoch)])
    starts = np.concatenate([[0], np.cumsum(shard_sizes)[:-1]]).astype(np.int64)
    parts = [starts[s] + rng.permutation(shard_sizes[s]) for s in rng.permutation(len(shard_sizes))]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class _ShardReader(torch.utils.data.Dataset):
    """Random access over one stream's shards with a small cache of decoded shards."""

    def __init__(self, store: ArtifactStore, prefix: str, stream: str, cache_shards: int = 2):
        self.store, self.prefix, self.stream = store, prefix.strip("/"), stream
        self.manifest = require_manifest(store, self.prefix, STAGE)
        markers = sorted(k for k in self.manifest.outputs if k.startswith(f"{stream}/") and k.endswith(".done.json"))
        if not markers:
            raise ValueError(f"{store.uri(self.prefix)} has no shards for {stream!r}; streams with data: "
                             f"{sorted(self.manifest.counts.get('streams', {}))}")
        self.files = [m.replace(".done.json", ".safetensors") for m in markers]
        self.keys_by_shard = [store.read_json(f"{self.prefix}/{m}")["keys"] for m in markers]
        self.shard_sizes = [len(k) for k in self.keys_by_shard]
        self.starts = np.concatenate([[0], np.cumsum(self.shard_sizes)]).astype(np.int64)
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self.cache_shards = max(1, int(cache_shards))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _shard(self, index: int) -> dict:
        from safetensors.numpy import load

        if index not in self._cache:
            self._cache[index] = load(self.store.read_bytes(f"{self.prefix}/{self.files[index]}"))
            while len(self._cache) > self.cache_shards:
                self._cache.popitem(last=False)
        self._cache.move_to_end(index)
        return self._cache[index]

    def locate(self, i: int) -> tuple[dict, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        shard = int(np.searchsorted(self.starts, i, side="right") - 1)
        return self._shard(shard), int(i - self.starts[shard])

    def key(self, i: int) -> str:
        shard = int(np.searchsorted(self.starts, i, side="right") - 1)
        return self.keys_by_shard[shard][i - self.starts[shard]]

    def order(self, seed: int, epoch: int) -> np.ndarray:
        return epoch_order(self.shard_sizes, seed, epoch)


class ClusterDataset(_ShardReader):
    """One cluster's samples: (latent [C,H,W] f32, text tokens [L,D] f32, mask [L] bool), L = max_length."""

    def __init__(self, store: ArtifactStore, prefix: str, cluster: int, cache_shards: int = 2,
                 stream: str | None = None):  # stream: e.g. the cluster's held-out split (holdout_stream)
        super().__init__(store, prefix, stream or cluster_stream(cluster), cache_shards)
        self.cluster = int(cluster)
        self.latent = self.manifest.config["latent"]
        self.text = self.manifest.config["text"]
        self.max_length, self.width = int(self.text["max_length"]), int(self.text["width"])

    def __getitem__(self, i: int):
        shard, row = self.locate(int(i))
        latent = torch.from_numpy(shard["latents"][row].astype(np.float32))  # [C, H, W]
        tokens = np.zeros((self.max_length, self.width), np.float32)
        mask = np.zeros(self.max_length, bool)
        n = min(shard["text_tokens"].shape[1], self.max_length)
        tokens[:n] = shard["text_tokens"][row, :n]
        mask[:n] = shard["text_mask"][row, :n].astype(bool)
        return latent, torch.from_numpy(tokens), torch.from_numpy(mask)  # [L, D], [L]

    def null_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The null caption padded to max_length: (tokens [L, D] f32, mask [L] bool)."""
        from safetensors.numpy import load

        raw = load(self.store.read_bytes(f"{self.prefix}/{NULL_TEXT}"))
        tokens = np.zeros((self.max_length, self.width), np.float32)
        mask = np.zeros(self.max_length, bool)
        n = min(len(raw["text_tokens"]), self.max_length)
        tokens[:n], mask[:n] = raw["text_tokens"][:n], raw["text_mask"][:n].astype(bool)
        return torch.from_numpy(tokens), torch.from_numpy(mask)


class RouterDataset(_ShardReader):
    """Every clustered sample: (latent [C,H,W] f32, cluster label int64 scalar tensor)."""

    def __init__(self, store: ArtifactStore, prefix: str, cache_shards: int = 2):
        super().__init__(store, prefix, ROUTER_STREAM, cache_shards)
        self.n_clusters = int(self.manifest.config["n_clusters"])

    def __getitem__(self, i: int):
        shard, row = self.locate(int(i))
        return torch.from_numpy(shard["latents"][row].astype(np.float32)), torch.tensor(int(shard["labels"][row]))


def iter_batches(dataset: _ShardReader, batch_size: int, seed: int, start_epoch: int = 0, start_position: int = 0,
                 epochs: int | None = None, drop_last: bool = False) -> Iterator[tuple[int, int, list]]:
    """Batches in the (seed, epoch) order from (start_epoch, start_position) onwards.

    Yields (epoch, next_position, batch) where batch is the list of collated fields and
    next_position is where a resumed run starts to continue after this batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= start_position <= len(dataset):
        raise ValueError(f"start_position must be in 0..{len(dataset)}, got {start_position}")
    epoch, position = int(start_epoch), int(start_position)
    while epochs is None or epoch < start_epoch + epochs:
        order = dataset.order(seed, epoch)
        while position < len(order):
            idx = order[position:position + batch_size]
            if drop_last and len(idx) < batch_size:
                break
            items = [dataset[int(i)] for i in idx]
            position += len(idx)
            yield epoch, position, [torch.stack(field) for field in zip(*items)]
        epoch, position = epoch + 1, 0


def training_inputs_info(store: ArtifactStore, prefix: str) -> dict:
    """What an expert or contributor must match: latent space, scale, resolution, text encoder..."""
    manifest = require_manifest(store, prefix, STAGE)
    return {"latent": manifest.config["latent"], "text": manifest.config["text"],
            "n_clusters": manifest.config["n_clusters"], "clusters": manifest.counts.get("clusters", {}),
            "clustering_version": manifest.config.get("clustering_version"),
            "data_hash": manifest.content_hash}


def shard_metadata(store: ArtifactStore, prefix: str, shard_file: str) -> dict:
    """Decoded safetensors metadata (keys, captions) of one shard file."""
    from safetensors import safe_open

    with store.local_path(f"{prefix}/{shard_file}") as path, safe_open(path, framework="numpy") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
