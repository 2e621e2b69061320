"""Train one expert on one cluster's data, alone on one device (HDDM sec. 3).

    result = train_expert(config, dataset, "artifacts/experts/cluster-3")

The dataset yields (latent [C, H, W], text tokens [L, D], mask [L]) for its own cluster only;
nothing else is read and nothing is communicated. The run folder (any ArtifactStore URL) holds
checkpoints/ (full resumable state, see checkpointing.py) and, once finished, expert/ (the
self-describing expert with EMA weights, via hddm_core.checkpoints). Calling train_expert again on
the same folder resumes from the latest complete checkpoint; a finished run returns at once.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from hddm_core.diffusion.objectives import Objective, get_objective
from hddm_core.storage import ArtifactStore
from hddm_core.training import rng_state
from hddm_core.training.config import INIT_SCRATCH, ExpertTrainConfig
from hddm_core.training.loop import TrainingLoop, TrainResult
from hddm_core.training.loss_plot import loss_curve_png

log = logging.getLogger(__name__)
ModelFactory = Callable[[ExpertTrainConfig], nn.Module]
EXPERT_PREFIX = "expert"


def default_model_factory(config: ExpertTrainConfig) -> nn.Module:
    """The DiT expert for config.architecture, sized to the config's latents and text encoder."""
    from hddm_core.models.dit import build_expert_model
    from hddm_core.models.presets import expert_config

    return build_expert_model(expert_config(config.architecture, in_channels=config.latent_channels,
                                            input_size=config.latent_size, text_dim=config.text_dim))


def split_batch(batch: Any) -> tuple[torch.Tensor, Any]:
    """(latents [B, C, H, W], cond) from a collated (latent, tokens[, mask]) batch or a dict batch."""
    if isinstance(batch, dict):
        x0 = batch["latent"]
        cond = {"tokens": batch["tokens"], **({"mask": batch["mask"]} if "mask" in batch else {})}
        return x0, cond
    if isinstance(batch, (list, tuple)):
        if len(batch) == 3:
            return batch[0], {"tokens": batch[1], "mask": batch[2].to(torch.bool)}
        if len(batch) == 2:
            return batch[0], batch[1]
    raise ValueError("expert batches must be (latent, tokens, mask), (latent, tokens) or a dict with "
                     f"'latent' and 'tokens'; got {type(batch).__name__}")


def drop_captions(model: nn.Module, cond: Any, drop: torch.Tensor) -> Any:
    """Swap in the model's learned null caption where drop is True (classifier-free guidance training)."""
    if hasattr(model, "drop_captions"):
        return model.drop_captions(cond, drop)
    if not hasattr(model, "null_cond"):
        raise ValueError(f"caption_dropout > 0 needs a model with drop_captions() or null_cond(); "
                         f"{type(model).__name__} has neither")
    tokens = cond["tokens"] if isinstance(cond, dict) else cond
    null = model.null_cond(tokens.shape[0], tokens.shape[1]).to(tokens.dtype)
    new = torch.where(drop[:, None, None].to(tokens.device), null, tokens)
    if isinstance(cond, dict):
        out = dict(cond, tokens=new)
        if "mask" in cond:
            out["mask"] = cond["mask"] | drop[:, None].to(cond["mask"].device)
        return out
    return new


def expert_loss_fn(objective: Objective, caption_dropout: float):
    """loss_fn for TrainingLoop: caption dropout, then the objective's weighted MSE."""

    def loss_fn(forward, model, batch, generator):
        x0, cond = split_batch(batch)
        if caption_dropout > 0:
            drop = torch.rand(x0.shape[0], generator=generator) < caption_dropout  # [B] bool
            cond = drop_captions(model, cond, drop.to(x0.device))
        return objective(forward, x0, cond, generator=generator).loss

    return loss_fn


def check_dataset(config: ExpertTrainConfig, dataset) -> None:
    """Fail early, naming the mismatch, if the data does not fit the declared latent space."""
    if len(dataset) == 0:
        raise ValueError(f"cluster {config.cluster_id}: the dataset is empty")
    x0, cond = split_batch(tuple(dataset[0]) if not isinstance(dataset[0], dict) else dataset[0])
    want = (config.latent_channels, config.latent_size, config.latent_size)
    if tuple(x0.shape) != want:
        raise ValueError(f"latents are {tuple(x0.shape)} but the config declares [C, H, W] = {list(want)} "
                         f"(latent_channels, latent_size)")
    tokens = cond["tokens"] if isinstance(cond, dict) else cond
    if tokens.shape[-1] != config.text_dim:
        raise ValueError(f"text tokens have width {tokens.shape[-1]} but config.text_dim = {config.text_dim} "
                         f"({config.text_encoder})")


def load_init(model: nn.Module, init: str) -> None:
    """Initialise from a converted ImageNet DiT expert (safetensors + manifest, hddm_core.checkpoints)."""
    from hddm_core.checkpoints import load_expert

    loaded = load_expert(init)  # validated: schema, shapes, hash, finiteness; never unpickled
    state = loaded.model.state_dict()
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"init {init!r} does not fit the configured architecture: shapes differ for {wrong[:5]}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"init {init!r} has tensors the model does not: {unexpected[:5]}")
    log.info("initialised from %s (%d tensors kept from scratch: %s)", init, len(missing), missing[:5])


@dataclass
class ExpertTrainResult:
    train: TrainResult
    expert_uri: str | None  # the exported expert (None unless the run completed)
    loop: TrainingLoop


def build_loop(config: ExpertTrainConfig, dataset, store: ArtifactStore | str, *,
               model_factory: ModelFactory | None = None, fault_hook=None,
               skip_positions: set[int] | None = None, check_data: bool = True) -> TrainingLoop:
    """Seeded model + objective + loop for this config (no training yet; call .resume() / .run())."""
    store = ArtifactStore(store) if isinstance(store, str) else store
    if check_data:
        check_dataset(config, dataset)
    rng_state.seed_everything(config.seed)  # bit-identical initial weights for a given seed
    model = (model_factory or default_model_factory)(config)
    if config.init != INIT_SCRATCH:
        load_init(model, config.init)
    if config.gradient_checkpointing:
        model.gradient_checkpointing = True
    objective = get_objective(config.objective, **config.objective_overrides())
    meta = {"cluster_id": config.cluster_id, "objective": objective.name,
            "declaration": {"prediction": objective.prediction, "schedule": objective.schedule,
                            "time_input": objective.time_input}}
    return TrainingLoop(config, model, dataset, expert_loss_fn(objective, config.caption_dropout), store,
                        title=f"expert cluster {config.cluster_id} ({objective.name})", extra_meta=meta,
                        fault_hook=fault_hook, skip_positions=skip_positions)


def train_expert(config: ExpertTrainConfig, dataset, store: ArtifactStore | str, *,
                 model_factory: ModelFactory | None = None, until_step: int | None = None,
                 data_hash: str = "", export: bool = True, fault_hook=None,
                 skip_positions: set[int] | None = None) -> ExpertTrainResult:
    """Train (or resume) one expert; export it with EMA weights when the run completes."""
    store = ArtifactStore(store) if isinstance(store, str) else store
    loop = build_loop(config, dataset, store, model_factory=model_factory, fault_hook=fault_hook,
                      skip_positions=skip_positions)
    loop.resume()
    result = loop.run(until_step=until_step)
    uri = None
    if result.status == "completed" and export:
        uri = export_expert(loop, config, store, data_hash=data_hash)
    return ExpertTrainResult(train=result, expert_uri=uri, loop=loop)


def ema_model(loop: TrainingLoop) -> nn.Module:
    """A copy of the trained model carrying the EMA weights (what an expert ships for inference)."""
    model = copy.deepcopy(loop.model).cpu()
    model.load_state_dict(loop.ema.averaged_state_dict(loop.model))
    return model.eval()


def export_expert(loop: TrainingLoop, config: ExpertTrainConfig, store: ArtifactStore, *, data_hash: str = "") -> str:
    """EMA weights as a self-describing expert under <run>/expert (hddm_core.checkpoints.save_expert)."""
    from hddm_core.checkpoints import save_expert

    fields = {
        "objective": config.objective, **config.objective_overrides(),
        "latent_space": config.latent_space, "latent_scale": float(config.latent_scale),
        "image_resolution": int(config.image_resolution or config.latent_size),
        "text_encoder": config.text_encoder, "data_hash": data_hash, "cluster_id": config.cluster_id,
        "clustering_version": config.clustering_version,
        "extra": {"training": {"steps": loop.step, "seed": config.seed, "final_loss": loop.losses[-1] if loop.losses else None,
                               "rollbacks": len(loop.rollbacks), "skipped_batches": sorted(loop.skipped),
                               "weights": "ema", "ema_decay": config.ema_decay, "config": config.to_dict()}},
    }
    uri = save_expert(store, EXPERT_PREFIX, ema_model(loop), fields)
    store.write_json(f"{EXPERT_PREFIX}/train_config.json", config.to_dict())
    store.write_bytes(f"{EXPERT_PREFIX}/loss_curve.png",
                      loss_curve_png(loop.losses, loop.title, [r["step"] for r in loop.rollbacks]))
    return uri
