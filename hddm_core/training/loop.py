"""The resumable, deterministic optimisation loop shared by the expert and router trainers.

It knows nothing about the architecture or the objective: it takes a built model, a map-style
dataset and a `loss_fn(forward, model, batch, generator) -> scalar loss`. It owns AdamW with
linear warm-up, gradient clipping, EMA, bf16 autocast, torch.compile, the sample order, the
guards (non-finite / spike -> roll back to the last checkpoint and skip the batch), atomic
checkpoints of the full state, SIGTERM handling and the progress bar.

Determinism contract (CPU): the sample order of epoch e is a pure function of (seed, e) (the
dataset's own `order(seed, epoch)` when it has one, e.g. ClusterDataset's); every
random draw of a step comes from the loop's own generator or torch's global one, and both are
checkpointed, as are NumPy's and Python's. A batch is identified by its global position
p = e * batches_per_epoch + k; skipped positions are part of the state. Hence a run resumed from
any checkpoint replays exactly what the uninterrupted run did, and a run that rolled back over a
bad batch equals a run that was told to skip that batch from the start.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm

from hddm_core import __version__
from hddm_core.storage import ArtifactStore
from hddm_core.training import rng_state
from hddm_core.training.checkpointing import Checkpoint, CheckpointManager, optimizer_from_tensors, optimizer_to_tensors
from hddm_core.training.config import LoopConfig
from hddm_core.training.ema import EMA
from hddm_core.training.guards import BadStep, LossGuard, all_finite
from hddm_core.training.loss_plot import loss_curve_png

log = logging.getLogger(__name__)
LossFn = Callable[[Callable, nn.Module, Any, torch.Generator], torch.Tensor]
GENERATOR_NAME = "loop"


class TooManyRollbacks(RuntimeError):
    pass


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a permutation that depends on (seed, epoch) only."""
    mixed = np.random.SeedSequence([int(seed), int(epoch), 0x5EED]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator().manual_seed(int(mixed[0]) << 32 | int(mixed[1]))
    return torch.randperm(n, generator=gen).tolist()


def to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


@dataclass
class TrainResult:
    status: str  # "completed" | "preempted" (SIGTERM) | "stopped" (until_step reached)
    step: int
    losses: list[float]
    rollbacks: list[dict] = field(default_factory=list)
    checkpoint: str | None = None
    images_per_s: float = 0.0


class TrainingLoop:
    def __init__(self, config: LoopConfig, model: nn.Module, dataset, loss_fn: LossFn, store: ArtifactStore, *,
                 collate_fn: Callable = default_collate, title: str = "training",
                 extra_meta: dict | None = None, fault_hook: Callable[[str], None] | None = None,
                 skip_positions: set[int] | None = None):
        self.config, self.loss_fn, self.store, self.title = config, loss_fn, store, title
        self.dataset, self.collate_fn = dataset, collate_fn
        self.extra_meta = dict(extra_meta or {})
        n = len(dataset)
        if config.batch_size > n:
            raise ValueError(f"batch_size {config.batch_size} exceeds the dataset's {n} samples")
        self.batches_per_epoch = n // config.batch_size  # drop_last: every batch has batch_size samples
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.forward = torch.compile(self.model) if config.compile else self.model
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps,
                                           weight_decay=config.weight_decay)
        self.ema = EMA(self.model, config.ema_decay)
        self.generator = torch.Generator().manual_seed(config.seed + 1)  # t, noise, dropout draws
        self.guard = LossGuard(config.spike_factor, config.spike_window)
        self.ckpt = CheckpointManager(store, keep=config.keep_checkpoints, fault_hook=fault_hook)
        self.step = 0
        self.position = 0
        self.losses: list[float] = []
        self.skipped: set[int] = set(skip_positions or ())
        self.rollbacks: list[dict] = []
        self._stop_requested = False
        self._orders: dict[int, list[int]] = {}

    # -- data ------------------------------------------------------------------------------
    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            custom = getattr(self.dataset, "order", None)  # e.g. ClusterDataset's shard-blocked shuffle
            order = [int(i) for i in custom(self.config.seed, epoch)] if callable(custom) else \
                epoch_order(len(self.dataset), self.config.seed, epoch)
            if len(order) != len(self.dataset):
                raise ValueError(f"dataset.order(seed, {epoch}) gave {len(order)} indices for {len(self.dataset)} samples")
            self._orders = {epoch: order}  # keep one epoch in memory
        return self._orders[epoch]

    def _batch_indices(self, position: int) -> list[int]:
        epoch, k = divmod(position, self.batches_per_epoch)
        b = self.config.batch_size
        return self._order(epoch)[k * b:(k + 1) * b]

    def _batches(self, start: int):
        """(position, batch) from `start` on, skipping positions in self.skipped, forever."""
        position = start
        while True:
            epoch_end = (position // self.batches_per_epoch + 1) * self.batches_per_epoch
            todo = [p for p in range(position, epoch_end) if p not in self.skipped]
            if self.config.num_workers == 0:
                for p in todo:
                    yield p, self.collate_fn([self.dataset[i] for i in self._batch_indices(p)])
            elif todo:
                loader = DataLoader(self.dataset, batch_sampler=[self._batch_indices(p) for p in todo],
                                    num_workers=self.config.num_workers, collate_fn=self.collate_fn,
                                    pin_memory=self.device.type == "cuda", persistent_workers=False,
                                    # its own generator: DataLoader otherwise draws worker seeds from
                                    # torch's global RNG, which would shift dropout draws vs num_workers=0
                                    generator=torch.Generator().manual_seed(self.config.seed + position))
                yield from zip(todo, loader)
            position = epoch_end

    # -- state -----------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        warm = self.config.warmup_steps
        return self.config.lr * (min(1.0, (step + 1) / warm) if warm else 1.0)

    def _state_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        opt_tensors, _ = optimizer_to_tensors(self.optimizer)
        rng_tensors, _ = rng_state.capture({GENERATOR_NAME: self.generator})
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "ema": self.ema.state_dict(),
            "optimizer": opt_tensors,
            "state": {**rng_tensors, "history.loss": torch.tensor(self.losses, dtype=torch.float64)},
        }

    def save(self) -> str:
        tensors = self._state_tensors()
        if not all_finite(t for group in tensors.values() for t in group.values()):
            raise BadStep("non-finite value in the state to be checkpointed", float("nan"))
        _, groups = optimizer_to_tensors(self.optimizer)
        _, rng_json = rng_state.capture({})
        meta = {
            "step": self.step,
            "data": {"position": self.position, "batches_per_epoch": self.batches_per_epoch,
                     "batch_size": self.config.batch_size, "dataset_len": len(self.dataset),
                     "order": "epoch_order(seed, epoch)"},
            "skipped_positions": sorted(self.skipped),
            "rollbacks": self.rollbacks,
            "guard": self.guard.state(),
            "optimizer_param_groups": groups,
            "rng": rng_json,
            "config": self.config.to_dict(),
            "code_version": __version__,
            **self.extra_meta,
        }
        extras = {"config.json": self.config.to_json().encode()}
        if self.config.loss_plot:
            extras["loss_curve.png"] = loss_curve_png(self.losses, self.title, [r["step"] for r in self.rollbacks])
        return self.ckpt.save(self.step, tensors, meta, extras)

    def restore(self, ckpt: Checkpoint, *, restore_rng: bool = True, restore_data: bool = True,
                restore_bookkeeping: bool = True) -> None:
        meta = ckpt.meta
        data = meta["data"]
        if data["dataset_len"] != len(self.dataset) or data["batch_size"] != self.config.batch_size:
            raise ValueError(f"checkpoint {ckpt.dir} was written for {data['dataset_len']} samples in batches of "
                             f"{data['batch_size']}; this run has {len(self.dataset)} in batches of {self.config.batch_size}")
        self.model.load_state_dict(ckpt.tensors["model"])
        self.ema.load_state_dict(ckpt.tensors["ema"])
        optimizer_from_tensors(self.optimizer, ckpt.tensors["optimizer"], meta["optimizer_param_groups"])
        if restore_rng:
            rng_state.restore(ckpt.tensors["state"], meta["rng"], {GENERATOR_NAME: self.generator})
        self.step = int(meta["step"])
        # restore_data=False restarts the sample order, as a loader that forgot its position would
        # (a control for the tests, which must then see different weights).
        self.position = int(data["position"]) if restore_data else 0
        self.losses = ckpt.tensors["state"]["history.loss"].tolist()
        self.guard.load(meta["guard"])
        if restore_bookkeeping:
            self.skipped = set(meta["skipped_positions"])
            self.rollbacks = list(meta["rollbacks"])

    def resume(self, *, restore_rng: bool = True, restore_data: bool = True) -> bool:
        """Load the latest complete checkpoint if any; False when starting fresh."""
        ckpt = self.ckpt.load_latest()
        if ckpt is None:
            return False
        self.restore(ckpt, restore_rng=restore_rng, restore_data=restore_data)
        log.info("resumed %s at step %d (data position %d)", ckpt.dir, self.step, self.position)
        return True

    def _rollback(self, err: BadStep, position: int) -> None:
        event = {"step": self.step, "position": position, "reason": err.reason, "value": repr(err.value)}
        log.warning("bad step at step %d, batch %d: %s; rolling back and skipping the batch", self.step, position, err)
        skipped, events = self.skipped | {position}, self.rollbacks + [event]
        if len(events) > self.config.max_rollbacks:
            raise TooManyRollbacks(f"{len(events)} rollbacks exceed max_rollbacks={self.config.max_rollbacks}; last: {err}")
        ckpt = self.ckpt.load_latest()
        if ckpt is None:
            raise RuntimeError("no checkpoint to roll back to (the loop saves one at step 0)")
        self.restore(ckpt, restore_bookkeeping=False)
        self.skipped, self.rollbacks = skipped, events

    # -- signals ---------------------------------------------------------------------------
    def request_stop(self, *_args) -> None:
        """Ask the loop to checkpoint at the next step boundary and return (SIGTERM does this)."""
        self._stop_requested = True

    @contextlib.contextmanager
    def _sigterm(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGTERM, self.request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    # -- the loop --------------------------------------------------------------------------
    def _one_step(self, batch) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16"):
            loss = self.loss_fn(self.forward, self.model, batch, self.generator)
        value = float(loss.detach())
        self.guard.check_loss(value)
        loss.backward()
        clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        self.guard.check_grad_norm(norm)
        self.optimizer.step()
        self.ema.update(self.model)
        self.guard.accept(value)
        return value

    def run(self, until_step: int | None = None) -> TrainResult:
        total = self.config.steps
        stop_at = total if until_step is None else min(until_step, total)
        if self.ckpt.latest_step() is None:
            self.save()  # step-0 checkpoint: something to roll back to and resume from
        images, t0, last_ckpt = 0, time.perf_counter(), None
        bar = tqdm(total=total, initial=self.step, desc=self.title, disable=not self.config.progress,
                   dynamic_ncols=True)
        status = "completed"
        with self._sigterm():
            batches = self._batches(self.position)
            last_postfix = 0.0
            while self.step < stop_at:
                if self._stop_requested:
                    status = "preempted"
                    break
                position, batch = next(batches)
                batch = to_device(batch, self.device)
                try:
                    value = self._one_step(batch)
                    self.step, self.position = self.step + 1, position + 1
                    self.losses.append(value)
                    if self.step % self.config.checkpoint_interval == 0 or self.step == total:
                        last_ckpt = self.save()
                except BadStep as err:
                    self._rollback(err, position)  # also when the save found a non-finite state
                    batches = self._batches(self.position)
                    bar.n = self.step
                    bar.refresh()
                    continue
                images += self.config.batch_size
                bar.update(1)
                now = time.perf_counter()
                if now - last_postfix > 0.5:
                    bar.set_postfix(loss=f"{value:.4f}", img_s=f"{images / max(now - t0, 1e-9):.1f}")
                    last_postfix = now
            if status == "completed" and self.step < total:
                status = "stopped"
            if status != "completed" and (last_ckpt is None or self.ckpt.latest_step() != self.step):
                last_ckpt = self.save()
        bar.close()
        elapsed = time.perf_counter() - t0
        return TrainResult(status=status, step=self.step, losses=list(self.losses), rollbacks=list(self.rollbacks),
                           checkpoint=last_ckpt or self.ckpt._key(f"step-{self.ckpt.latest_step():09d}"),
                           images_per_s=images / max(elapsed, 1e-9))
