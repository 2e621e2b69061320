"""Train the router p(cluster | x_t, t) on every cluster's latents (HDDM sec. 3, the DiT-B classifier).

Each step: sample t, noise the clean latent on the sampler's path (linear: x_t = (1 - t) x0 + t eps),
and minimise the cross-entropy against the sample's cluster label. The same resumable,
deterministic loop as the experts (loop.py). When done: the EMA router is saved self-describing
(hddm_core.checkpoints.save_router) with its evaluation (accuracy / ECE / NLL per t bucket,
confusion matrices) as JSON and a picture beside it.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hddm_core.diffusion.objectives import sample_time
from hddm_core.diffusion.schedules import get_schedule
from hddm_core.storage import ArtifactStore
from hddm_core.diffusion.time_inputs import network_time
from hddm_core.training import rng_state
from hddm_core.training.config import RouterTrainConfig
from hddm_core.training.loop import TrainingLoop, TrainResult
from hddm_core.training.loss_plot import loss_curve_png
from hddm_core.training.router_eval import evaluate_router, router_report_png

log = logging.getLogger(__name__)
ROUTER_PREFIX = "router"


def default_router_factory(config: RouterTrainConfig) -> nn.Module:
    from hddm_core.models.presets import router_config
    from hddm_core.models.router import build_router

    return build_router(router_config(config.architecture, config.num_clusters, in_channels=config.latent_channels,
                                      input_size=config.latent_size))


def router_loss_fn(config: RouterTrainConfig):
    path = get_schedule(config.path)

    def loss_fn(forward, model, batch, generator):
        x0, label = batch[0], batch[1].long()
        t = sample_time(config.time_sampling, x0.shape[0], generator)  # [B] float64
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        c = path.coefficients(t)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        x_t = c.alpha.to(x0).view(shape) * x0 + c.sigma.to(x0).view(shape) * noise  # [B, C, H, W]
        logits = forward(x_t, network_time(t, config.time_input).to(x0))  # [B, K]
        return F.cross_entropy(logits.float(), label.to(logits.device))

    return loss_fn


def check_router_dataset(config: RouterTrainConfig, dataset) -> None:
    if len(dataset) == 0:
        raise ValueError("the router dataset is empty")
    x0, label = dataset[0][0], int(dataset[0][1])
    want = (config.latent_channels, config.latent_size, config.latent_size)
    if tuple(x0.shape) != want:
        raise ValueError(f"latents are {tuple(x0.shape)} but the config declares [C, H, W] = {list(want)}")
    if not 0 <= label < config.num_clusters:
        raise ValueError(f"label {label} outside 0..{config.num_clusters - 1} (num_clusters={config.num_clusters})")


@dataclass
class RouterTrainResult:
    train: TrainResult
    router_uri: str | None
    report: dict | None
    loop: TrainingLoop


def build_router_loop(config: RouterTrainConfig, dataset, store: ArtifactStore | str, *,
                      model_factory: Callable[[RouterTrainConfig], nn.Module] | None = None,
                      fault_hook=None) -> TrainingLoop:
    store = ArtifactStore(store) if isinstance(store, str) else store
    check_router_dataset(config, dataset)
    rng_state.seed_everything(config.seed)
    model = (model_factory or default_router_factory)(config)
    return TrainingLoop(config, model, dataset, router_loss_fn(config), store,
                        collate_fn=lambda items: (torch.stack([i[0] for i in items]),
                                                  torch.stack([torch.as_tensor(i[1]) for i in items])),
                        title=f"router ({config.num_clusters} clusters)", extra_meta={"kind": "router"},
                        fault_hook=fault_hook)


def train_router(config: RouterTrainConfig, dataset, store: ArtifactStore | str, *,
                 model_factory: Callable[[RouterTrainConfig], nn.Module] | None = None, eval_dataset=None,
                 until_step: int | None = None, data_hash: str = "", export: bool = True) -> RouterTrainResult:
    """Train (or resume) the router; when complete, evaluate the EMA router and save it with its report.

    eval_dataset: held-out (latent, label) samples; defaults to the training set (stated in the report).
    """
    store = ArtifactStore(store) if isinstance(store, str) else store
    loop = build_router_loop(config, dataset, store, model_factory=model_factory)
    loop.resume()
    result = loop.run(until_step=until_step)
    uri = report = None
    if result.status == "completed" and export:
        router = copy.deepcopy(loop.model).cpu()
        router.load_state_dict(loop.ema.averaged_state_dict(loop.model))
        router.eval()
        report = evaluate_router(router, eval_dataset if eval_dataset is not None else dataset, config.num_clusters,
                                 buckets=config.eval_buckets, per_bucket=config.eval_samples_per_bucket,
                                 path=config.path, time_input=config.time_input, batch_size=config.batch_size,
                                 seed=config.seed + 1000)
        report["eval_split"] = "held-out" if eval_dataset is not None else "training samples (fresh noise and t)"
        uri = save_router_artifacts(loop, router, config, store, report, data_hash)
    return RouterTrainResult(train=result, router_uri=uri, report=report, loop=loop)


def save_router_artifacts(loop: TrainingLoop, router: nn.Module, config: RouterTrainConfig, store: ArtifactStore,
                          report: dict, data_hash: str) -> str:
    from hddm_core.checkpoints import save_router

    summary = {f"acc_t{r['t_lo']:.1f}-{r['t_hi']:.1f}": round(r["accuracy"], 4) for r in report["buckets"]}
    fields = {"latent_space": config.latent_space, "latent_scale": float(config.latent_scale),
              "image_resolution": int(config.image_resolution or config.latent_size), "data_hash": data_hash,
              "schedule": config.path, "time_input": config.time_input,
              "extra": {"training": {"steps": loop.step, "seed": config.seed, "weights": "ema",
                                     "config": config.to_dict(), "rollbacks": len(loop.rollbacks)},
                        "evaluation": summary}}
    uri = save_router(store, ROUTER_PREFIX, router, fields)
    store.write_json(f"{ROUTER_PREFIX}/evaluation.json", report)
    store.write_bytes(f"{ROUTER_PREFIX}/evaluation.png", router_report_png(report))
    store.write_json(f"{ROUTER_PREFIX}/train_config.json", config.to_dict())
    store.write_bytes(f"{ROUTER_PREFIX}/loss_curve.png", loss_curve_png(loop.losses, loop.title))
    return uri
