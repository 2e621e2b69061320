"""The router: a DiT-B/2-style classifier p(cluster | x_t, t) over K clusters, no text.

Same patchify, positions, timestep embedder and blocks as the expert (without cross-attention),
DiT's per-block adaLN by default (the paper's 129M DiT-B/2 router), then a head: tokens are pooled
(mean over patches, or a learned CLS token prepended before the blocks), layer-normed with a
time-modulated shift/scale, and projected to K logits. The head starts at zero, so an untrained
router gives uniform weights.
"""
from __future__ import annotations

import torch
from torch import nn

from hddm_core.models.dit import DiTBlock, _build_embedders, _init_embedders
from hddm_core.models.layers import LAYER_NORM_EPS
from hddm_core.models.presets import RouterConfig


class RouterHead(nn.Module):
    def __init__(self, hidden_size: int, num_clusters: int, adaln: str):
        super().__init__()
        self.adaln = adaln
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        if adaln == "single":
            self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.linear = nn.Linear(hidden_size, num_clusters)

    def forward(self, pooled: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        # pooled [B, D], t_emb [B, D] -> logits [B, K]
        if self.adaln == "single":
            mod = self.scale_shift_table[None] + t_emb[:, None]
        else:
            mod = self.adaLN_modulation(t_emb).reshape(t_emb.shape[0], 2, -1)
        shift, scale = mod.unbind(1)  # 2 x [B, D]
        return self.linear(self.norm(pooled) * (1 + scale) + shift)


class Router(nn.Module):
    """router(x [B, C, H, W], t_net [B]) -> logits [B, K]."""

    def __init__(self, config: RouterConfig):
        super().__init__()
        if not isinstance(config, RouterConfig):
            raise ValueError(f"Router needs a RouterConfig, got {type(config).__name__}")
        self.config = c = config
        d = c.hidden_size
        _build_embedders(self, c)
        if c.pool == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList(DiTBlock(d, c.num_heads, c.mlp_ratio, c.adaln, cross_attention=False)
                                    for _ in range(c.depth))
        self.head = RouterHead(d, c.num_clusters, c.adaln)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_embedders(self)
        if self.config.pool == "cls":
            nn.init.normal_(self.cls_token, std=0.02)
        nn.init.zeros_(self.head.linear.weight)  # uniform routing before training
        nn.init.zeros_(self.head.linear.bias)
        if self.config.adaln == "per-block":
            nn.init.zeros_(self.head.adaLN_modulation[-1].weight)
            nn.init.zeros_(self.head.adaLN_modulation[-1].bias)

    def forward(self, x: torch.Tensor, t_net: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.in_channels or x.shape[2] != c.input_size or x.shape[3] != c.input_size:
            raise ValueError(f"x must be [B, {c.in_channels}, {c.input_size}, {c.input_size}], got {tuple(x.shape)}")
        t_net = torch.as_tensor(t_net, device=x.device)
        if t_net.dim() == 0:
            t_net = t_net.expand(x.shape[0])
        if t_net.dim() != 1 or t_net.shape[0] != x.shape[0]:
            raise ValueError(f"t_net must be [B] = [{x.shape[0]}] (or a scalar), got {tuple(t_net.shape)}")
        h = self.x_embedder(x) + self.pos_embed  # [B, N, D]
        if c.pool == "cls":
            h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)  # [B, 1 + N, D]
        t_emb = self.t_embedder(t_net)  # [B, D]
        t_mod = self.t_block(t_emb) if c.adaln == "single" else t_emb
        for block in self.blocks:
            h = block(h, t_mod)
        pooled = h[:, 0] if c.pool == "cls" else h.mean(dim=1)  # [B, D]
        return self.head(pooled, t_emb)  # [B, K]


def build_router(config: RouterConfig) -> Router:
    return Router(config)
