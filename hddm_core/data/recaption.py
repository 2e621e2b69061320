"""Recaption stage: a vision-language model writes a new caption for every image.

Backends: `LlavaCaptioner` on transformers' LLaVA classes (a model id such as
llava-hf/llava-1.5-7b-hf or a local path; batched, fp16/bf16 on GPU, configurable prompt) and
`PassthroughCaptioner` (keeps the original captions; the offline default since no registry package
carries captioning weights). Output: captions/<index>.parquet shards keyed by sample key with the
original caption beside the new one, then the manifest. A captioner built in memory rather than
from pretrained weights (the tests' tiny random LLaVA) is marked `captions_usable: false` in the
manifest and `read_captions` refuses to hand those strings out as captions.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Iterable, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from hddm_core.storage import ArtifactStore
from hddm_core.data.sharded_stage import ShardedStage, manifest_stream_files, require_manifest, run_batched, sample_source
from hddm_core.data.unit_runner import ModelSpec, UnitKernel

log = logging.getLogger(__name__)

STAGE = "recaption"
STREAM = "captions"
DEFAULT_PROMPT = "Describe this image in one sentence."
# LLaVA-1.5's conversation format; {prompt} is the instruction, <image> where the image tokens go.
LLAVA_15_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"
_DTYPES = ("float32", "float16", "bfloat16")


class Captioner(Protocol):
    def describe(self) -> dict: ...

    def caption(self, images: list, originals: list[str]) -> list[str]: ...


class PassthroughCaptioner:
    """Keeps the original caption (no model)."""

    def describe(self) -> dict:
        return {"backend": "passthrough", "captions_usable": True}

    def caption(self, images: list, originals: list[str]) -> list[str]:
        return list(originals)


def _torch_dtype(name: str):
    import torch

    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {name!r}")
    return getattr(torch, name)


def clean_generated(text: str) -> str:
    """First line of a generation, without surrounding whitespace or quotes."""
    text = text.strip().split("\n", 1)[0].strip()
    return text.strip('"').strip()


class LlavaCaptioner:
    """Captions images with a LLaVA model (transformers LlavaForConditionalGeneration)."""

    def __init__(self, model, processor, *, source: str, pretrained: bool, prompt: str = DEFAULT_PROMPT,
                 template: str = LLAVA_15_TEMPLATE, max_new_tokens: int = 64):
        if "<image>" not in template or "{prompt}" not in template:
            raise ValueError(f"template must contain '<image>' and '{{prompt}}', got {template!r}")
        if int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
        self.model, self.processor = model.eval(), processor
        self.source, self.pretrained = source, pretrained
        self.prompt, self.template, self.max_new_tokens = prompt, template, int(max_new_tokens)
        # Batched generation with a decoder-only LM pads on the left so every row ends at its prompt.
        self.processor.tokenizer.padding_side = "left"
        if self.processor.tokenizer.pad_token is None:
            self.processor.tokenizer.pad_token = self.processor.tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, model_id_or_path: str = "llava-hf/llava-1.5-7b-hf", *, device: str | None = None,
                        dtype: str | None = None, **kwargs) -> "LlavaCaptioner":
        """Load weights from the hub id or a local folder (set HF_HUB_OFFLINE=1 offline)."""
        import torch
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        model = LlavaForConditionalGeneration.from_pretrained(model_id_or_path, dtype=_torch_dtype(dtype)).to(device)
        processor = AutoProcessor.from_pretrained(model_id_or_path)
        return cls(model, processor, source=model_id_or_path, pretrained=True, **kwargs)

    def describe(self) -> dict:
        return {"backend": "llava", "model": self.source, "pretrained": self.pretrained, "prompt": self.prompt,
                "template": self.template, "max_new_tokens": self.max_new_tokens,
                "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
                # A model not loaded from pretrained weights writes noise, never captions for people.
                "captions_usable": bool(self.pretrained)}

    def caption(self, images: list, originals: list[str]) -> list[str]:
        import torch

        text = [self.template.format(prompt=self.prompt)] * len(images)
        param = next(self.model.parameters())
        inputs = self.processor(images=[im.convert("RGB") for im in images], text=text, return_tensors="pt",
                                padding=True)
        inputs = {k: (v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device))
                  for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]  # generate returns prompt + continuation
        decoded = self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [clean_generated(t) for t in decoded]


@dataclass
class RecaptionConfig:
    batch_size: int = 8
    shard_size: int = 1024

    def validate(self) -> "RecaptionConfig":
        for name in ("batch_size", "shard_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        return self


def _captions_table(rows: list) -> bytes:
    table = pa.table({"key": [k for k, _ in rows], "original_caption": [r[0] for _, r in rows],
                      "caption": [r[1] for _, r in rows]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def recaption(store: ArtifactStore, out_prefix: str, captioner: Captioner, *, source_prefix: str | None = None,
              samples: Iterable | None = None, input_hash: str | None = None,
              config: RecaptionConfig | None = None, force: bool = False, total: int | None = None):
    """Caption every sample; returns the stage manifest (an existing one if this run already finished)."""
    config = (config or RecaptionConfig()).validate()
    items, inputs = sample_source(store, source_prefix, samples, input_hash)
    described = captioner.describe()
    full_config = {"captioner": described, "batch_size": config.batch_size, "shard_size": config.shard_size}
    stage = ShardedStage(store, out_prefix, STAGE, full_config, inputs, config.shard_size, force)
    if (done := stage.already_completed()) is not None:
        log.info("recaption: %s already complete, skipped", store.uri(out_prefix))
        return done
    stage.begin()

    def compute(batch):
        new = captioner.caption([s.image for s in batch], [s.caption for s in batch])
        if len(new) != len(batch):
            raise RuntimeError(f"captioner returned {len(new)} captions for {len(batch)} images")
        return [(s.caption, str(c)) for s, c in zip(batch, new)]

    seen = run_batched(stage, items, route=lambda s: [STREAM], compute=compute, record=lambda _, __, r: r,
                       flush=lambda _, __, rows: {".parquet": _captions_table(rows)},
                       batch_size=config.batch_size, desc="recaption", total=total)
    return stage.finish({"samples": seen, "captions_usable": described["captions_usable"]})


def _unit_compute(captioner: Captioner, samples: list) -> list:
    new = captioner.caption([s.image for s in samples], [s.caption for s in samples])
    if len(new) != len(samples):
        raise RuntimeError(f"captioner returned {len(new)} captions for {len(samples)} images")
    return [(s.caption, str(c)) for s, c in zip(samples, new)]


def _unit_flush(rows: list) -> dict[str, bytes]:
    return {".parquet": _captions_table(rows)}


UNIT_KERNEL = UnitKernel(stream=STREAM, compute=_unit_compute, flush=_unit_flush)


def recaption_units(store: ArtifactStore, out_prefix: str, model: ModelSpec, source, *,
                    config: RecaptionConfig | None = None, unit_size: int | None = None, executor=None,
                    gpu: bool = False, force: bool = False, torch_threads: int | None = None):
    """The recaption stage as a map over work units (see hddm_core.data.embed.embed_units)."""
    from hddm_core.data.coordinator import run_map_stage

    config = (config or RecaptionConfig()).validate()
    return run_map_stage(
        store, out_prefix, stage=STAGE, kernel=f"{__name__}:UNIT_KERNEL", model=model, source=source,
        config_of=lambda d: {"captioner": d, "batch_size": config.batch_size, "shard_size": config.shard_size},
        counts_of=lambda d: {"captions_usable": d["captions_usable"]}, shard_size=config.shard_size,
        batch_size=config.batch_size, unit_size=unit_size, executor=executor, gpu=gpu, force=force,
        torch_threads=torch_threads)


def read_captions_table(store: ArtifactStore, prefix: str):
    """All caption rows (key, original_caption, caption) named by the manifest, as a pyarrow Table."""
    manifest = require_manifest(store, prefix, STAGE)
    tables = [pq.read_table(io.BytesIO(store.read_bytes(f"{prefix}/{k}")))
              for k in manifest_stream_files(manifest, STREAM, ".parquet")]
    return pa.concat_tables(tables) if tables else pa.table({"key": [], "original_caption": [], "caption": []})


def read_captions(store: ArtifactStore, prefix: str, allow_unusable: bool = False) -> dict[str, str]:
    """key -> new caption. Refuses captions the manifest marks unusable (from a random-init model)."""
    manifest = require_manifest(store, prefix, STAGE)
    if not manifest.counts.get("captions_usable", False) and not allow_unusable:
        raise ValueError(f"{store.uri(prefix)}: captions come from a model not loaded from pretrained weights "
                         f"({manifest.config['captioner'].get('model')!r}); they are not captions. "
                         "Pass allow_unusable=True only for plumbing tests.")
    table = read_captions_table(store, prefix)
    return dict(zip(table.column("key").to_pylist(), table.column("caption").to_pylist()))
