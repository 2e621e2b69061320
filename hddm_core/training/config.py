"""Training configs: frozen, validated at construction, saved as JSON beside every checkpoint.

`LoopConfig` holds what any resumable loop needs (optimiser, schedule of the learning rate, EMA,
checkpoints, guards, seed, device, precision); `ExpertTrainConfig` adds what makes an expert
(objective, architecture, latent space, text encoder, cluster, caption dropout, initialisation);
`RouterTrainConfig` adds the router's (number of clusters, noise path, evaluation buckets).

`from_params(*sources, **derived)` is the one mapping from a stage's parameters to a config: every
field of the config that a source (a pydantic model or a mapping) also has is carried under the
same name, derived values (resolved device, dataset facts) are passed by keyword, and the config
validates the result once. No field is copied by hand, and this module knows nothing of the pipeline.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from hddm_core.diffusion.objectives import FLOW_MATCHING, OBJECTIVES
from hddm_core.models.presets import TINY
from hddm_core.diffusion.schedules import SCHEDULES
from hddm_core.diffusion.time_inputs import TIME_INPUTS

PRECISIONS = ("fp32", "bf16")
DEVICES_PREFIXES = ("cpu", "cuda", "mps")


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _positive_int(name: str, value: Any) -> None:
    _need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
          f"{name} must be a positive integer, got {value!r}")


def _fraction(name: str, value: Any, *, closed_right: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        0.0 <= value <= 1.0 if closed_right else 0.0 <= value < 1.0)
    _need(ok, f"{name} must be a number in [0, 1{']' if closed_right else ')'}, got {value!r}")


def _choice(name: str, value: Any, valid) -> None:
    _need(value in valid, f"unknown {name} {value!r}; valid: {sorted(valid)}")


@dataclass(frozen=True)
class LoopConfig:
    """Everything a deterministic, resumable optimisation loop needs."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    warmup_steps: int = 0  # linear warm-up from 0 to lr, then constant (DiT/PixArt practice)
    weight_decay: float = 0.0  # AdamW decoupled decay (DiT trains with 0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (the norm is still checked)
    ema_decay: float = 0.9999
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2  # complete checkpoints kept on disk (>= 1; the latest always is)
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 (autocast; weights and optimiser stay fp32)
    compile: bool = False  # torch.compile the forward
    num_workers: int = 0  # DataLoader workers; the sample order does not depend on it
    spike_factor: float = 10.0  # a loss above factor x median of the last window good losses is a spike; 0 = off
    spike_window: int = 50
    max_rollbacks: int = 20  # give up (raise) after this many rollbacks in one run
    progress: bool = True
    loss_plot: bool = True  # write loss_curve.png with every checkpoint (~0.2 s each on CPU)

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_interval", "keep_checkpoints", "spike_window",
                     "max_rollbacks"):
            _positive_int(name, getattr(self, name))
        _need(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
              f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        _need(isinstance(self.num_workers, int) and self.num_workers >= 0,
              f"num_workers must be an integer >= 0, got {self.num_workers!r}")
        _need(isinstance(self.seed, int) and 0 <= self.seed < 2**63, f"seed must be an integer in [0, 2^63), got {self.seed!r}")
        for name in ("lr", "adam_eps"):
            v = getattr(self, name)
            _need(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f"{name} must be a finite number > 0, got {v!r}")
        for name in ("weight_decay", "grad_clip", "spike_factor"):
            v = getattr(self, name)
            _need(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, f"{name} must be a finite number >= 0, got {v!r}")
        _need(self.spike_factor == 0 or self.spike_factor > 1,
              f"spike_factor must be 0 (off) or > 1, got {self.spike_factor!r}")
        betas = tuple(self.adam_betas)
        _need(len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas),
              f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        object.__setattr__(self, "adam_betas", (float(betas[0]), float(betas[1])))
        _fraction("ema_decay", self.ema_decay, closed_right=False)
        _choice("precision", self.precision, PRECISIONS)
        _need(isinstance(self.device, str) and self.device.split(":")[0] in DEVICES_PREFIXES,
              f"device must be one of {list(DEVICES_PREFIXES)} (optionally ':N'), got {self.device!r}")

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["kind"] = type(self).__name__
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict):
        data = dict(data)
        kind = data.pop("kind", cls.__name__)
        if kind != cls.__name__:
            raise ValueError(f"config kind {kind!r} cannot be read as {cls.__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid: {sorted(known)}")
        if "adam_betas" in data:
            data["adam_betas"] = tuple(data["adam_betas"])
        return cls(**data)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_params(cls, *sources: Any, **derived: Any):
        """The config from parameter objects: each field a source has under the same name is carried
        (later sources win), then `derived` (values computed by the caller) on top; validated once here.

        A source is a mapping or a pydantic model (read through model_dump); its other fields (prefixes,
        nested models, ...) are ignored. A derived key that is not a field is an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(derived) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid: {sorted(known)}")
        values: dict[str, Any] = {}
        for source in sources:
            data = source if isinstance(source, Mapping) else source.model_dump()
            values.update({k: v for k, v in data.items() if k in known})
        values.update(derived)
        if "adam_betas" in values:
            values["adam_betas"] = tuple(values["adam_betas"])
        return cls(**values)


INIT_SCRATCH = "scratch"


@dataclass(frozen=True)
class ExpertTrainConfig(LoopConfig):
    """One expert, one cluster, one device (HDDM sec. 3: zero communication between experts)."""

    cluster_id: int = 0
    objective: str = FLOW_MATCHING  # a name in hddm_core.diffusion.objectives.OBJECTIVES
    schedule: str | None = None  # None = the objective's own; else a schedules.SCHEDULES name
    time_input: str | None = None  # None = the objective's own
    architecture: str = TINY  # preset name in hddm_core.models
    latent_space: str = "pixel"  # "pixel" (3 x H) or "sd-vae" (4 x H/8): declared in the manifest
    latent_channels: int = 3
    latent_size: int = 32
    latent_scale: float = 1.0  # the factor the latents were multiplied by (SD-VAE: 0.18215)
    image_resolution: int | None = None  # pixels of the decoded image; None = latent_size (pixel space only)
    text_encoder: str = "all-MiniLM-L6-v2"
    text_dim: int = 384
    caption_dropout: float = 0.1  # probability of the model's learned null caption (CFG training)
    init: str = INIT_SCRATCH  # "scratch" or a path/URI of a converted ImageNet DiT expert checkpoint
    gradient_checkpointing: bool = False  # recompute each DiT block in backward (activation memory ~1/depth)
    clustering_version: str | None = None  # the run's clustering (hddm_core.contrib.compatibility); declared in the manifest

    def __post_init__(self):
        super().__post_init__()
        _need(isinstance(self.cluster_id, int) and self.cluster_id >= 0,
              f"cluster_id must be an integer >= 0, got {self.cluster_id!r}")
        _choice("objective", self.objective, OBJECTIVES)
        if self.schedule is not None:
            _choice("schedule", self.schedule, SCHEDULES)
        if self.time_input is not None:
            _choice("time_input", self.time_input, TIME_INPUTS)
        for name in ("latent_channels", "latent_size", "text_dim"):
            _positive_int(name, getattr(self, name))
        _need(isinstance(self.latent_scale, (int, float)) and math.isfinite(self.latent_scale) and self.latent_scale > 0,
              f"latent_scale must be a finite number > 0, got {self.latent_scale!r}")
        _fraction("caption_dropout", self.caption_dropout, closed_right=False)
        if self.image_resolution is None:
            _need(self.latent_space == "pixel", f"image_resolution is required for latent_space {self.latent_space!r} "
                  "(only 'pixel' latents default to latent_size)")
        else:
            _positive_int("image_resolution", self.image_resolution)
        for name in ("architecture", "latent_space", "text_encoder"):
            _need(isinstance(getattr(self, name), str) and getattr(self, name),
                  f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        _need(self.clustering_version is None or (isinstance(self.clustering_version, str) and self.clustering_version),
              f"clustering_version must be a non-empty string or None, got {self.clustering_version!r}")
        _need(isinstance(self.init, str) and self.init != "",
              f"init must be {INIT_SCRATCH!r} or a path to a converted DiT checkpoint, got {self.init!r}")

    def objective_overrides(self) -> dict:
        return {k: v for k, v in (("schedule", self.schedule), ("time_input", self.time_input)) if v is not None}


ROUTER_TIME_SAMPLINGS = ("uniform", "logit-normal")


@dataclass(frozen=True)
class RouterTrainConfig(LoopConfig):
    """The router p(cluster | x_t, t): noisy latents on the sampler's path, cross-entropy."""

    num_clusters: int = 8
    architecture: str = TINY  # router preset in hddm_core.models
    latent_space: str = "pixel"
    latent_channels: int = 3
    latent_size: int = 32
    latent_scale: float = 1.0
    image_resolution: int | None = None  # None = latent_size (pixel space only)
    path: str = "linear"  # the sampler's path: x_t = alpha x0 + sigma eps (schedules.SCHEDULES)
    time_sampling: str = "uniform"
    time_input: str = "scaled-1000"  # how the router's network reads t (declared in its manifest)
    eval_buckets: int = 10  # t buckets for accuracy / calibration reports
    eval_samples_per_bucket: int = 256
    ema_decay: float = 0.999

    def __post_init__(self):
        super().__post_init__()
        _need(isinstance(self.num_clusters, int) and self.num_clusters >= 2,
              f"num_clusters must be an integer >= 2, got {self.num_clusters!r}")
        for name in ("latent_channels", "latent_size", "eval_buckets", "eval_samples_per_bucket"):
            _positive_int(name, getattr(self, name))
        _choice("path", self.path, SCHEDULES)
        _choice("time_sampling", self.time_sampling, ROUTER_TIME_SAMPLINGS)
        _choice("time_input", self.time_input, TIME_INPUTS)
        if self.image_resolution is None:
            _need(self.latent_space == "pixel", f"image_resolution is required for latent_space {self.latent_space!r}")
        else:
            _positive_int("image_resolution", self.image_resolution)
