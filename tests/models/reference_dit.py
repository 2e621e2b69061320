"""An independent class-conditional DiT (facebookresearch/DiT's architecture, written against timm's
layers like the original) used as the conversion source and as the ground truth it must match.

Its state_dict has the public DiT-XL-2-256x256 key layout: x_embedder.proj.*, pos_embed,
t_embedder.mlp.{0,2}.*, y_embedder.embedding_table.weight (num_classes + 1 rows, the last one
the null class), blocks.N.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1}.*,
final_layer.{linear, adaLN_modulation.1}.*. Nothing here imports hddm_core.models.
"""
import math

import numpy as np
import torch
from timm.models.vision_transformer import Attention, Mlp, PatchEmbed
from torch import nn


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def t_frequencies(t, dim=256, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def pos_embed_2d(embed_dim, grid_size):
    def one(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    return np.concatenate([one(embed_dim // 2, grid[0]), one(embed_dim // 2, grid[1])], axis=1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        return self.mlp(t_frequencies(t))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, hidden):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)  # + the CFG null class


class Block(nn.Module):
    def __init__(self, hidden, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads=heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def modulation(self, c):
        return self.adaLN_modulation(c)

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class Final(nn.Module):
    def __init__(self, hidden, patch, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class ReferenceDiT(nn.Module):
    def __init__(self, input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=3, num_heads=4,
                 mlp_ratio=4.0, num_classes=10, learn_sigma=True):
        super().__init__()
        self.in_channels, self.patch = in_channels, patch_size
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        n = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.from_numpy(pos_embed_2d(hidden_size, int(n**0.5))).float()[None],
                                      requires_grad=False)
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = Final(hidden_size, patch_size, self.out_channels)
        self.null_class = num_classes

    def randomize(self, generator, std=0.05):
        """Non-zero random weights everywhere (DiT's own init zeroes adaLN/final: too easy to match)."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name != "pos_embed":
                    p.copy_(torch.randn(p.shape, generator=generator) * std)
        return self

    def cond(self, t, y):
        return self.t_embedder(t) + self.y_embedder.embedding_table(y)

    def features(self, x, t, y):
        """Tokens before the final layer [B, N, D] and the conditioning c [B, D]."""
        c = self.cond(t, y)
        h = self.x_embedder(x) + self.pos_embed
        for block in self.blocks:
            h = block(h, c)
        return h, c

    def forward(self, x, t, y):
        h, c = self.features(x, t, y)
        h = self.final_layer(h, c)
        b, n, _ = h.shape
        g = int(n**0.5)
        h = h.reshape(b, g, g, self.patch, self.patch, self.out_channels)
        h = torch.einsum("nhwpqc->nchpwq", h)
        return h.reshape(b, self.out_channels, g * self.patch, g * self.patch)
