"""A small real torch denoiser and a seeded tensor dataset for the loop's fault-tolerance tests.

The loop must not depend on the architecture, so these tests use a compact conv network (time
embedding, pooled text conditioning, learned null caption) that trains in milliseconds; the
real-data proof (test_proof_real_data.py) uses the DiT expert.
"""
from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from hddm_core.training.config import ExpertTrainConfig

C, H, L, D = 3, 8, 4, 16


class TinyDenoiser(nn.Module):
    def __init__(self, channels: int = C, text_dim: int = D, width: int = 32):
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.time = nn.Sequential(nn.Linear(1, width), nn.SiLU(), nn.Linear(width, width))
        self.text = nn.Linear(text_dim, width)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.drop = nn.Dropout(0.1)  # consumes torch's global RNG: its state must be checkpointed
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        self.null_caption = nn.Parameter(torch.randn(text_dim) / text_dim**0.5)

    def null_cond(self, batch: int, length: int = 1) -> torch.Tensor:
        return self.null_caption[None, None].expand(batch, length, -1)

    def forward(self, x, t_net, cond):
        tokens, mask = (cond["tokens"], cond["mask"]) if isinstance(cond, dict) else (cond, None)
        w = mask.float()[..., None] if mask is not None else torch.ones_like(tokens[..., :1])
        pooled = (tokens * w).sum(1) / w.sum(1).clamp_min(1)  # [B, D]
        h = self.inp(x)  # [B, W, H, W]
        emb = self.time(t_net.float()[:, None] / 1000.0) + self.text(pooled)  # [B, W]
        h = torch.nn.functional.silu(h + emb[:, :, None, None])
        h = self.drop(torch.nn.functional.silu(self.mid(h)))
        return self.out(h)  # [B, C, H, W]


class SeededDataset(torch.utils.data.Dataset):
    """n samples of (latent [C,H,H], tokens [L,D], mask [L]) fixed by a seed; optional poisoning."""

    def __init__(self, n: int = 40, seed: int = 7, poison: dict[int, float] | None = None):
        g = torch.Generator().manual_seed(seed)
        self.latents = torch.randn(n, C, H, H, generator=g)
        self.tokens = torch.randn(n, L, D, generator=g)
        self.mask = torch.ones(n, L, dtype=torch.bool)
        self.mask[:, -1] = torch.rand(n, generator=g) > 0.5
        self.poison = dict(poison or {})

    def __len__(self):
        return len(self.latents)

    def __getitem__(self, i):
        x = self.latents[i]
        if i in self.poison:
            x = x * self.poison[i]  # float('nan') -> NaN batch; 1e3 -> loss spike
        return x, self.tokens[i], self.mask[i]


def tiny_config(**overrides) -> ExpertTrainConfig:
    base = dict(steps=12, batch_size=4, lr=2e-3, warmup_steps=3, checkpoint_interval=2, keep_checkpoints=2,
                latent_channels=C, latent_size=H, text_dim=D, caption_dropout=0.25, ema_decay=0.9, loss_plot=False,
                architecture="tiny-conv-test", latent_space="test-tensors", image_resolution=H, objective="flow-matching",
                seed=3, progress=False, spike_factor=0.0)
    return ExpertTrainConfig(**{**base, **overrides})


def factory(config: ExpertTrainConfig) -> nn.Module:
    return TinyDenoiser(config.latent_channels, config.text_dim)


def loop_hash(loop) -> str:
    """sha256 over model, EMA and optimiser tensors in key order (bit-level identity)."""
    h = hashlib.sha256()
    from hddm_core.training.checkpointing import optimizer_to_tensors

    groups = {"model": loop.model.state_dict(), "ema": loop.ema.state_dict(),
              "opt": optimizer_to_tensors(loop.optimizer)[0]}
    for gname, group in groups.items():
        for k in sorted(group):
            h.update(f"{gname}.{k}".encode())
            h.update(group[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def checkpoint_hash(store, step: int) -> str:
    """Hash of a checkpoint's weight files (their sha256s recorded in state.json)."""
    state = json.loads(store.read_bytes(f"checkpoints/step-{step:09d}/state.json"))
    files = state["files"]
    return hashlib.sha256(json.dumps([files[k] for k in ("model.safetensors", "ema.safetensors",
                                                          "optimizer.safetensors")]).encode()).hexdigest()
