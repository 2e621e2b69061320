"""Building blocks shared by the expert DiT and the router.

Names and layouts follow DiT's models.py (Peebles & Xie 2023) so that public ImageNet DiT
checkpoints map onto them by key: x_embedder.proj (Conv2d patchify), pos_embed (fixed 2-D
sin-cos), t_embedder.mlp.{0,2}, attn.qkv/attn.proj, mlp.fc1/mlp.fc2 (GELU tanh).
Every forward is free of Python branches on tensor values, so torch.compile traces one graph,
and attention goes through torch's scaled_dot_product_attention (fused kernels on GPU, bf16 under
autocast without code changes).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FREQUENCY_EMBEDDING_SIZE = 256  # DiT's TimestepEmbedder default
LAYER_NORM_EPS = 1e-6  # DiT / PixArt


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation x * (1 + scale) + shift; x [B, N, D], shift/scale [B, 1, D] or [B, D]."""
    if shift.dim() == 2:
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    return torch.addcmul(shift, x, 1 + scale)  # one fused kernel instead of a mul and an add


def timestep_embedding(t: torch.Tensor, dim: int = FREQUENCY_EMBEDDING_SIZE, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of (possibly fractional) times t [B]; exactly DiT's formula
    (cos half first, then sin; float32), so converted checkpoints see the features they learned."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t [B] -> [B, D]: sinusoidal features through Linear-SiLU-Linear (DiT's key layout mlp.0 / mlp.2)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = FREQUENCY_EMBEDDING_SIZE):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_embedding_size)  # [B, F] float32
        return self.mlp(freq.to(self.mlp[0].weight.dtype))  # [B, D]


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> [B, (H/p)(W/p), D] by a stride-p convolution (timm's PatchEmbed, key proj.*)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, D, h, w] -> [B, N, D]


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """DiT / MAE fixed 2-D sin-cos positional embedding, [grid_size**2, embed_dim] float64."""
    if embed_dim % 4:
        raise ValueError(f"hidden size must be a multiple of 4 for the 2-D sin-cos embedding, got {embed_dim}")
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)

    def one_dim(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_dim(embed_dim // 2, grid[0]), one_dim(embed_dim // 2, grid[1])], axis=1)


class Mlp(nn.Module):
    """fc1 - GELU(tanh) - fc2, DiT's (timm) layout."""

    def __init__(self, hidden_size: int, mlp_hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's Attention key layout)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # unbind (not qkv[0], qkv[1], ...): its backward is one stack, not three zero-filled copies
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, Dh]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    """Image tokens attend to (already projected) text tokens; PixArt-alpha's MultiHeadCrossAttention.

    mask [B, L] bool (True = a real token) or None. A row with no real token would give NaN in
    softmax; such rows attend to every token instead (a tensor op, no Python branch).
    """

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(hidden_size, hidden_size)
        self.kv = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        length, heads = context.shape[1], self.num_heads
        q = self.q(x).reshape(b, n, heads, d // heads).transpose(1, 2)  # [B, H, N, Dh]
        k, v = self.kv(context).reshape(b, length, 2, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, L, Dh]
        attn_mask = None
        if mask is not None:
            keep = mask | ~mask.any(dim=1, keepdim=True)  # all-padding rows: attend everywhere
            attn_mask = keep[:, None, None, :]  # [B, 1, 1, L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, H, N, Dh]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def unpatchify(x: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """[B, N, p*p*C] -> [B, C, H, W]; DiT's (p, q, c) order inside each patch token."""
    b, n, _ = x.shape
    h = w = int(round(math.sqrt(n)))
    x = x.reshape(b, h, w, patch_size, patch_size, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, h * patch_size, w * patch_size)
