"""The expert network: a DiT with PixArt-alpha's AdaLN-Single and cross-attention to text.

PixArt-alpha (Chen et al. 2023, sec. 2.3): instead of DiT's per-block MLP adaLN_i(c) -> 6 x D
modulation, ONE global MLP of the timestep embedding produces the 6 x D vector S = t_block(t_emb)
and every block i adds its own learned table E_i (scale_shift_table, [6, D]):
    (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) = E_i + S
The final layer uses (shift, scale) = E_final + t_emb. Text conditions the network through
cross-attention after self-attention (no norm, no gate: PixArt's block). Time enters only through
t_emb, so the backbone knows nothing of the objective: it reads whatever number the expert's
time-input convention produces (hddm_core.diffusion.time_inputs.network_time).

Classifier-free guidance: `null_cond(B)` is a LEARNED null caption, one D_text vector repeated
over the sequence (DiT keeps an extra learned "null class" row; PixArt a learned y_embedding).
Identical keys make cross-attention length-independent, so any number of null tokens gives the
same output; `drop_captions(cond, drop)` substitutes it per sample for the trainer.

`config.adaln = "per-block"` swaps in DiT's per-block adaLN MLPs: at XL/2 with a 768-wide text
projection that is 824,642,704 parameters against AdaLN-Single's 607,004,560 (the paper: ~826M
vs 605M; tests/models/test_param_counts.py pins both and explains the gap).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from hddm_core.models.layers import (LAYER_NORM_EPS, CrossAttention, Mlp, PatchEmbed, SelfAttention, TimestepEmbedder,
                     modulate, sincos_pos_embed_2d, unpatchify)
from hddm_core.models.presets import DiTConfig

Cond = Any  # [B, L, D_text] tensor | {"tokens": [B, L, D_text], "mask": [B, L] bool (optional)} | None


class DiTBlock(nn.Module):
    """Self-attention, optional cross-attention, MLP; modulated by AdaLN-Single or per-block adaLN."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, adaln: str, cross_attention: bool):
        super().__init__()
        self.adaln = adaln
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.cross_attn = CrossAttention(hidden_size, num_heads) if cross_attention else None
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        if adaln == "single":
            self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, t_mod: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        # x [B, N, D]; t_mod: [B, 6D] global AdaLN-Single vector, or c [B, D] for per-block adaLN
        b, _, d = x.shape
        if self.adaln == "single":
            mod = self.scale_shift_table[None] + t_mod.reshape(b, 6, d)  # [B, 6, D]
        else:
            mod = self.adaLN_modulation(t_mod).reshape(b, 6, d)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(1)  # 6 x [B, D]
        # gated residuals x + gate * f(.) as one addcmul each (fewer passes over [B, N, D] on CPU)
        x = torch.addcmul(x, gate_msa.unsqueeze(1), self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        if self.cross_attn is not None:
            x = x + self.cross_attn(x, context, mask)
        x = torch.addcmul(x, gate_mlp.unsqueeze(1), self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        return x


class FinalLayer(nn.Module):
    """Modulated LayerNorm then Linear(D, p*p*C_out): PixArt's T2IFinalLayer or DiT's FinalLayer."""

    def __init__(self, hidden_size: int, out_features: int, adaln: str):
        super().__init__()
        self.adaln = adaln
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.linear = nn.Linear(hidden_size, out_features)
        if adaln == "single":
            self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        # x [B, N, D]; t_emb [B, D] (the timestep embedding itself, as in PixArt)
        if self.adaln == "single":
            mod = self.scale_shift_table[None] + t_emb[:, None]  # [B, 2, D]
        else:
            mod = self.adaLN_modulation(t_emb).reshape(t_emb.shape[0], 2, -1)
        shift, scale = mod.unbind(1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # [B, N, out]


class CaptionProjection(nn.Module):
    """Text token embeddings [B, L, D_text] -> [B, L, D] (PixArt's y_proj: fc1 - GELU(tanh) - fc2)."""

    def __init__(self, text_dim: int, hidden_size: int):
        super().__init__()
        self.fc1 = nn.Linear(text_dim, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(tokens), approximate="tanh"))


def _build_embedders(model: nn.Module, c) -> None:
    """Patchify, positions, timestep embedder (and the AdaLN-Single global MLP) for expert and router.

    Keys match the public DiT layout (x_embedder, pos_embed, t_embedder) so checkpoints map onto them.
    """
    d = c.hidden_size
    model.x_embedder = PatchEmbed(c.patch_size, c.in_channels, d)
    # Fixed 2-D sin-cos positions, saved with the weights (DiT's pos_embed; transferred on import).
    grid = c.input_size // c.patch_size
    model.register_buffer("pos_embed", torch.tensor(sincos_pos_embed_2d(d, grid), dtype=torch.float32)[None])
    model.t_embedder = TimestepEmbedder(d)
    if c.adaln == "single":
        model.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))  # the one global modulation MLP


def _init_embedders(model: nn.Module) -> None:
    """DiT / PixArt initialisation shared by expert and router (DiT's initialize_weights)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    w = model.x_embedder.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.x_embedder.proj.bias)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)
    if hasattr(model, "t_block"):
        nn.init.normal_(model.t_block[1].weight, std=0.02)
    for block in model.blocks:
        if hasattr(block, "adaLN_modulation"):  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)


class DiTExpert(nn.Module):
    """model(x [B, C, H, W], t_net [B], cond) -> [B, C, H, W]; see the module docstring."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        if not isinstance(config, DiTConfig):
            raise ValueError(f"DiTExpert needs a DiTConfig, got {type(config).__name__}")
        self.config = c = config
        d = c.hidden_size
        _build_embedders(self, c)
        self.caption_projection = CaptionProjection(c.text_dim, d)
        self.null_caption = nn.Parameter(torch.randn(c.text_dim) / c.text_dim**0.5)  # learned null token
        self.blocks = nn.ModuleList(DiTBlock(d, c.num_heads, c.mlp_ratio, c.adaln, cross_attention=True)
                                    for _ in range(c.depth))
        self.final_layer = FinalLayer(d, c.patch_size**2 * c.in_channels, c.adaln)
        self.gradient_checkpointing = False  # a training setting (ExpertTrainConfig), not part of the architecture
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_embedders(self)
        nn.init.normal_(self.caption_projection.fc1.weight, std=0.02)  # PixArt's y_proj init
        nn.init.normal_(self.caption_projection.fc2.weight, std=0.02)
        for block in self.blocks:  # PixArt: cross-attention starts as a no-op residual
            nn.init.zeros_(block.cross_attn.proj.weight)
            nn.init.zeros_(block.cross_attn.proj.bias)
        nn.init.zeros_(self.final_layer.linear.weight)  # DiT: the output starts at zero
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.config.adaln == "per-block":
            nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
            nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)

    # -- classifier-free guidance --------------------------------------------------------------
    def null_cond(self, batch: int, length: int = 1) -> torch.Tensor:
        """The learned null caption as text tokens [batch, length, D_text] (any length: same output)."""
        if batch < 1 or length < 1:
            raise ValueError(f"null_cond needs batch >= 1 and length >= 1, got batch={batch}, length={length}")
        return self.null_caption[None, None].expand(batch, length, -1)

    def drop_captions(self, cond: Cond, drop: torch.Tensor) -> Cond:
        """Replace the captions of samples where drop [B] bool is True by the null caption.

        Keeps cond's form: a tensor stays a tensor; a dict gets its mask set to all-True on dropped
        rows (every null token is real). Differentiable w.r.t. the null caption.
        """
        tokens, mask = self._split_cond(cond, None)
        drop = torch.as_tensor(drop, device=tokens.device).to(torch.bool).reshape(-1)
        if drop.shape[0] != tokens.shape[0]:
            raise ValueError(f"drop has {drop.shape[0]} entries for a batch of {tokens.shape[0]} captions")
        null = self.null_caption.to(tokens.dtype)[None, None]
        new_tokens = torch.where(drop[:, None, None], null, tokens)
        if not isinstance(cond, dict):
            return new_tokens
        out = dict(cond, tokens=new_tokens)
        if mask is not None:
            out["mask"] = mask | drop[:, None]
        return out

    # -- forward --------------------------------------------------------------------------------
    def _split_cond(self, cond: Cond, batch: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if cond is None:
            if batch is None:
                raise ValueError("cond is None: nothing to drop")
            return self.null_cond(batch), None
        if isinstance(cond, dict):
            if "tokens" not in cond:
                raise ValueError(f"cond dict needs a 'tokens' entry [B, L, D_text]; got keys {sorted(cond)}")
            tokens, mask = cond["tokens"], cond.get("mask")
        else:
            tokens, mask = cond, None
        if not torch.is_tensor(tokens) or tokens.dim() != 3 or tokens.shape[-1] != self.config.text_dim:
            shape = tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__
            raise ValueError(f"text tokens must be [B, L, {self.config.text_dim}] (config.text_dim), got {shape}")
        if mask is not None:
            if not torch.is_tensor(mask) or tuple(mask.shape) != tuple(tokens.shape[:2]):
                shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
                raise ValueError(f"text mask must be [B, L] = {tuple(tokens.shape[:2])}, got {shape}")
            mask = mask.to(torch.bool)
        return tokens, mask

    def _check_inputs(self, x: torch.Tensor, t_net: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.in_channels or x.shape[2] != c.input_size or x.shape[3] != c.input_size:
            raise ValueError(f"x must be [B, {c.in_channels}, {c.input_size}, {c.input_size}], got {tuple(x.shape)}")
        t_net = torch.as_tensor(t_net, device=x.device)
        if t_net.dim() == 0:
            t_net = t_net.expand(x.shape[0])
        if t_net.dim() != 1 or t_net.shape[0] != x.shape[0]:
            raise ValueError(f"t_net must be [B] = [{x.shape[0]}] (or a scalar), got {tuple(t_net.shape)}")
        return t_net

    def forward(self, x: torch.Tensor, t_net: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        c = self.config
        t_net = self._check_inputs(x, t_net)
        tokens, mask = self._split_cond(cond, x.shape[0])
        if tokens.shape[0] != x.shape[0]:
            raise ValueError(f"cond has batch {tokens.shape[0]}, x has batch {x.shape[0]}")
        context = self.caption_projection(tokens)  # [B, L, D]
        h = self.x_embedder(x) + self.pos_embed  # [B, N, D]
        t_emb = self.t_embedder(t_net)  # [B, D]
        t_mod = self.t_block(t_emb) if c.adaln == "single" else t_emb  # [B, 6D] or [B, D]
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # recompute the block in backward instead of storing its activations (same gradients)
                h = torch.utils.checkpoint.checkpoint(block, h, t_mod, context, mask, use_reentrant=False)
            else:
                h = block(h, t_mod, context, mask)  # [B, N, D]
        h = self.final_layer(h, t_emb)  # [B, N, p*p*C]
        return unpatchify(h, c.patch_size, c.in_channels)  # [B, C, H, W]


def build_expert_model(config: DiTConfig) -> DiTExpert:
    return DiTExpert(config)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (the fixed pos_embed buffer is not one; DiT counted it as a frozen Parameter)."""
    return sum(p.numel() for p in model.parameters())


def meta_parameter_count(build, config) -> int:
    """Parameter count without allocating memory (builds on the meta device)."""
    with torch.device("meta"):
        return count_parameters(build(config))


def flops_per_forward(config: DiTConfig, batch: int = 1, text_len: int = 0) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward pass, by formula; used for MFU reports."""
    d, n = config.hidden_size, config.num_patches
    p2c = config.patch_size**2 * config.in_channels
    mlp = int(d * config.mlp_ratio)
    per_block = 2 * n * (4 * d * d + 2 * d * mlp) + 4 * n * n * d  # qkv+proj, mlp, QK^T and AV
    if text_len:
        per_block += 2 * n * 2 * d * d + 2 * text_len * 2 * d * d + 4 * n * text_len * d  # q,proj; kv; attn
    total = config.depth * per_block + 2 * n * p2c * d * 2  # patchify conv + final linear
    return int(batch * total + batch * 2 * text_len * (config.text_dim * d + d * d))
