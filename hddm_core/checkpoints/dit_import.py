"""Convert a public class-conditional ImageNet DiT checkpoint (DiT-XL-2-256x256 key layout) into a
text-conditioned AdaLN-Single expert (hddm_core.models.DiTExpert).

Source layout (facebookresearch/DiT models.py): x_embedder.proj.{weight,bias}, pos_embed [1, N, D],
t_embedder.mlp.{0,2}.{weight,bias}, y_embedder.embedding_table.weight [num_classes + 1, D]
(the last row is the learned "null class" used for classifier-free guidance),
blocks.i.attn.{qkv,proj}, blocks.i.mlp.{fc1,fc2}, blocks.i.adaLN_modulation.1.{weight,bias}
[6D, D], final_layer.linear [p*p*2C, D] (eps and learned-sigma channels),
final_layer.adaLN_modulation.1 [2D, D]. DiT conditions every block on c = t_emb(t) + y_emb(y):
    mod_i(t, y) = W_i silu(c) + b_i                               (per-block adaLN)
AdaLN-Single (PixArt-alpha sec. 2.3) wants mod_i(t) = E_i + W_g silu(t_emb(t)) + b_g.

What is transferred bit-for-bit (same key): x_embedder, pos_embed, t_embedder (see the null fold
below), every block's attn.qkv, attn.proj, mlp.fc1, mlp.fc2.
What is dropped: y_embedder (class labels have no meaning for text; only its null row survives,
folded), the learned-sigma half of final_layer.linear, all per-block adaLN linears (consumed by
the derivation below).
What is new (fresh init, as a freshly built expert with the same seed): caption_projection,
null_caption, every cross_attn (its output projection is zero, so cross-attention starts as a
no-op residual and the converted network equals the unconditional DiT), and final_layer.linear
(zero, DiT's init; the eps and velocity heads differ), unless keep_eps_head=True for an
eps-predicting expert, which keeps the eps rows of final_layer.linear.

The reparameterisation (our choice; PixArt-alpha initialises the tables so S(t) matches DiT
"without c" at a chosen t* = 500 and trains the global MLP from scratch):
1. Null fold: the text model has no class, so the natural start is DiT's unconditional branch,
   c(t) = t_emb(t) + y_null. Adding y_null to t_embedder.mlp.2.bias makes the converted time
   embedding equal c(t) for EVERY t (fold_null_class=True; the one source tensor that changes).
2. Global MLP = the mean of the per-block adaLN linears: W_g = mean_i W_i, b_g = mean_i b_i.
   PixArt's fresh random init would make S(t) pure noise away from t*; the mean keeps the
   average modulation over blocks equal to DiT's for every t, and it is exact for every block
   and every t when the blocks share W_i (then the tables absorb the bias differences).
3. Per-block tables: E_i = (W_i - W_g) silu(c*) + (b_i - b_g), with c* = c(t*): block i's
   modulation equals DiT's exactly at t = t*, the tables average to zero over blocks, and the
   error elsewhere is (W_i - W_g)(silu(c(t)) - silu(c*)).
4. Final layer: PixArt's T2IFinalLayer modulates with E_f + t_emb(t) (no MLP), so
   E_f = W_f silu(c*) + b_f - c*: exact at t*.
tests/models/test_dit_import.py checks each claim against an independent DiT implementation.

The network keeps reading time as DiT did, the DDPM index round(999 t): the manifest's time
input is "discrete-999" whatever the objective.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Mapping

import torch

from hddm_core.models.dit import DiTExpert, build_expert_model
from hddm_core.models.presets import WIDTHS, DiTConfig

log = logging.getLogger(__name__)

DIT_TIME_INPUT = "discrete-999"
DEFAULT_T_STAR = 500  # PixArt-alpha's choice of the timestep where the reparameterisation is exact
_BLOCK_KEYS = ("attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
               "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
               "adaLN_modulation.1.weight", "adaLN_modulation.1.bias")
_TOP_KEYS = ("x_embedder.proj.weight", "x_embedder.proj.bias", "pos_embed",
             "t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias",
             "final_layer.linear.weight", "final_layer.linear.bias",
             "final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias")
_NULL_KEY = "y_embedder.embedding_table.weight"


@dataclass(frozen=True)
class DiTSourceInfo:
    """What the source checkpoint's tensors say about its architecture."""

    hidden_size: int
    depth: int
    patch_size: int
    in_channels: int
    input_size: int
    mlp_ratio: float
    learn_sigma: bool
    num_class_rows: int  # num_classes + 1 when trained with class dropout (the null row is last)


@dataclass
class ConversionReport:
    """Which target tensors came from where (keys are the expert's state_dict keys)."""

    transferred: dict[str, str] = field(default_factory=dict)  # target -> source key, bit-for-bit copy
    derived: dict[str, str] = field(default_factory=dict)  # target -> how it was computed
    reinitialised: list[str] = field(default_factory=list)  # fresh init, nothing from the source
    dropped: dict[str, str] = field(default_factory=dict)  # source key -> why
    t_star: int = DEFAULT_T_STAR
    fold_null_class: bool = True
    keep_eps_head: bool = False
    source: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ConversionResult:
    model: DiTExpert
    report: ConversionReport


# -- reading a checkpoint ---------------------------------------------------------------------
def load_dit_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a DiT checkpoint file: .safetensors (preferred), or the public .pt release.

    A .pt file is read with torch.load(weights_only=True), which refuses arbitrary Python objects;
    use it only for the trusted public DiT release (contributed experts are safetensors-only).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DiT checkpoint not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    if suffix in (".pt", ".pth"):
        log.warning("reading %s with torch.load(weights_only=True): only for the trusted public DiT release", path)
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, Mapping) and "ema" in obj and isinstance(obj["ema"], Mapping):
            obj = obj["ema"]  # a DiT training checkpoint: the EMA weights are the ones released
        elif isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
            obj = obj["model"]
        if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
            raise ValueError(f"{path}: expected a state dict of tensors (DiT layout)")
        return dict(obj)
    raise ValueError(f"unsupported DiT checkpoint suffix {suffix!r} in {path}; valid: .safetensors, .pt, .pth")


def inspect_dit_state_dict(sd: Mapping[str, torch.Tensor]) -> DiTSourceInfo:
    """Infer the architecture and check that every key of the DiT layout is there (and no other)."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    missing = [k for k in _TOP_KEYS if k not in sd]
    if missing:
        raise ValueError(f"not a DiT checkpoint: missing {missing[:6]}")
    indices = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not indices or indices != list(range(len(indices))):
        raise ValueError(f"DiT blocks must be numbered 0..depth-1, found {indices[:10]}")
    expected = set(_TOP_KEYS) | {f"blocks.{i}.{k}" for i in indices for k in _BLOCK_KEYS} | {_NULL_KEY}
    missing = sorted(expected - set(sd) - {_NULL_KEY})
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise ValueError(f"DiT layout mismatch: missing {missing[:6]}, unexpected {unexpected[:6]}")
    w = sd["x_embedder.proj.weight"]
    if w.dim() != 4 or w.shape[2] != w.shape[3]:
        raise ValueError(f"x_embedder.proj.weight must be [D, C, p, p], got {tuple(w.shape)}")
    d, c, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    n = int(sd["pos_embed"].shape[1])
    grid = int(round(n**0.5))
    if grid * grid != n or tuple(sd["pos_embed"].shape) != (1, n, d):
        raise ValueError(f"pos_embed must be [1, grid^2, {d}], got {tuple(sd['pos_embed'].shape)}")
    out_rows = int(sd["final_layer.linear.weight"].shape[0])
    if out_rows not in (p * p * c, p * p * 2 * c):
        raise ValueError(f"final_layer.linear has {out_rows} rows; expected {p * p * c} or {p * p * 2 * c}")
    rows = int(sd[_NULL_KEY].shape[0]) if _NULL_KEY in sd else 0
    return DiTSourceInfo(hidden_size=d, depth=len(indices), patch_size=p, in_channels=c, input_size=grid * p,
                         mlp_ratio=int(sd["blocks.0.mlp.fc1.weight"].shape[0]) / d,
                         learn_sigma=out_rows == p * p * 2 * c, num_class_rows=rows)


def _default_heads(hidden: int) -> int:
    for _, (h, _, heads) in WIDTHS.items():
        if h == hidden:
            return heads
    raise ValueError(f"no preset has hidden size {hidden}; pass num_heads explicitly (valid presets: {list(WIDTHS)})")


def target_config(info: DiTSourceInfo, text_dim: int, num_heads: int | None = None) -> DiTConfig:
    heads = num_heads or _default_heads(info.hidden_size)
    preset = next((name for name, (h, depth, nh) in WIDTHS.items()
                   if (h, depth, nh) == (info.hidden_size, info.depth, heads)), "custom")
    return DiTConfig(input_size=info.input_size, patch_size=info.patch_size, in_channels=info.in_channels,
                     hidden_size=info.hidden_size, depth=info.depth, num_heads=heads, mlp_ratio=info.mlp_ratio,
                     text_dim=text_dim, adaln="single", preset=preset)


def _eps_rows(patch_size: int, channels: int) -> torch.Tensor:
    """Rows of DiT's final linear that hold eps: output index = (p1 * p + p2) * 2C + c, eps for c < C."""
    idx = torch.arange(patch_size * patch_size * 2 * channels)
    return idx[(idx % (2 * channels)) < channels]


# -- the conversion ---------------------------------------------------------------------------
@torch.no_grad()
def convert_dit_state_dict(sd: Mapping[str, torch.Tensor], *, text_dim: int, num_heads: int | None = None,
                           t_star: int = DEFAULT_T_STAR, fold_null_class: bool = True,
                           keep_eps_head: bool = False, seed: int = 0) -> ConversionResult:
    """DiT state dict -> (DiTExpert with AdaLN-Single, report). See the module docstring."""
    if not (0 <= t_star <= 999):
        raise ValueError(f"t_star must be a DDPM index in 0..999, got {t_star}")
    sd = {k.removeprefix("module."): v.detach().to("cpu") for k, v in sd.items()}
    info = inspect_dit_state_dict(sd)
    if fold_null_class and info.num_class_rows == 0:
        raise ValueError(f"fold_null_class needs {_NULL_KEY} (its last row is the null class); "
                         "pass fold_null_class=False")
    config = target_config(info, text_dim, num_heads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the reinitialised parts equal a fresh expert built with this seed
        model = build_expert_model(config)
    target = model.state_dict()
    report = ConversionReport(t_star=t_star, fold_null_class=fold_null_class, keep_eps_head=keep_eps_head,
                              source=dataclasses.asdict(info))
    new: dict[str, torch.Tensor] = {}

    def copy(key: str, src: str | None = None) -> None:
        src = src or key
        if tuple(sd[src].shape) != tuple(target[key].shape):
            raise ValueError(f"{src}: shape {tuple(sd[src].shape)} does not fit {key} {tuple(target[key].shape)}")
        new[key] = sd[src].to(target[key].dtype).clone()
        report.transferred[key] = src

    for key in ("x_embedder.proj.weight", "x_embedder.proj.bias", "pos_embed",
                "t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight"):
        copy(key)
    for i in range(info.depth):
        for part in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            copy(f"blocks.{i}.{part}.weight")
            copy(f"blocks.{i}.{part}.bias")

    # 1. null fold: the converted time embedding is DiT's unconditional c(t) = t_emb(t) + y_null
    t_bias = sd["t_embedder.mlp.2.bias"].double()
    if fold_null_class:
        y_null = sd[_NULL_KEY][-1].double()
        new["t_embedder.mlp.2.bias"] = (t_bias + y_null).float()
        report.derived["t_embedder.mlp.2.bias"] = "t_embedder.mlp.2.bias + y_embedder.embedding_table[-1] (null class)"
        report.dropped[_NULL_KEY] = "class labels do not exist for text; the null row is folded into the time bias"
    else:
        copy("t_embedder.mlp.2.bias")
        if _NULL_KEY in sd:
            report.dropped[_NULL_KEY] = "class labels do not exist for text"

    # c* = c(t*) in float64, through the source time embedder (+ the folded null class)
    from hddm_core.models.layers import timestep_embedding

    freq = timestep_embedding(torch.tensor([float(t_star)])).double()  # [1, 256]
    hid = torch.nn.functional.silu(freq @ sd["t_embedder.mlp.0.weight"].double().T + sd["t_embedder.mlp.0.bias"].double())
    c_star = (hid @ sd["t_embedder.mlp.2.weight"].double().T + new["t_embedder.mlp.2.bias"].double())[0]  # [D]
    s_star = torch.nn.functional.silu(c_star)

    # 2. global MLP = mean of the per-block adaLN linears
    ws = torch.stack([sd[f"blocks.{i}.adaLN_modulation.1.weight"].double() for i in range(info.depth)])  # [depth, 6D, D]
    bs = torch.stack([sd[f"blocks.{i}.adaLN_modulation.1.bias"].double() for i in range(info.depth)])  # [depth, 6D]
    w_g, b_g = ws.mean(0), bs.mean(0)
    new["t_block.1.weight"], new["t_block.1.bias"] = w_g.float(), b_g.float()
    report.derived["t_block.1.weight"] = "mean over blocks of blocks.i.adaLN_modulation.1.weight"
    report.derived["t_block.1.bias"] = "mean over blocks of blocks.i.adaLN_modulation.1.bias"

    # 3. per-block tables: exact at t*, zero mean over blocks
    d = info.hidden_size
    for i in range(info.depth):
        table = (ws[i] - w_g) @ s_star + (bs[i] - b_g)  # [6D]
        new[f"blocks.{i}.scale_shift_table"] = table.reshape(6, d).float()
        report.derived[f"blocks.{i}.scale_shift_table"] = \
            f"(W_{i} - mean W) silu(c*) + (b_{i} - mean b), c* = c(t*={t_star})"
        for part in ("weight", "bias"):
            report.dropped[f"blocks.{i}.adaLN_modulation.1.{part}"] = "consumed by t_block and the block tables"

    # 4. final layer: (shift, scale) = E_f + c(t) in PixArt's T2IFinalLayer
    w_f, b_f = sd["final_layer.adaLN_modulation.1.weight"].double(), sd["final_layer.adaLN_modulation.1.bias"].double()
    new["final_layer.scale_shift_table"] = (w_f @ s_star + b_f - c_star.repeat(2)).reshape(2, d).float()
    report.derived["final_layer.scale_shift_table"] = f"W_f silu(c*) + b_f - c*, c* = c(t*={t_star})"
    for part in ("weight", "bias"):
        report.dropped[f"final_layer.adaLN_modulation.1.{part}"] = "consumed by final_layer.scale_shift_table"

    if keep_eps_head:
        rows = _eps_rows(info.patch_size, info.in_channels) if info.learn_sigma else slice(None)
        for part in ("weight", "bias"):
            new[f"final_layer.linear.{part}"] = sd[f"final_layer.linear.{part}"][rows].float().clone()
            report.derived[f"final_layer.linear.{part}"] = "eps rows of the source (learned-sigma rows dropped)"
    else:
        for part in ("weight", "bias"):
            report.dropped[f"final_layer.linear.{part}"] = \
                "reinitialised to zero: the objective's head differs" + (" (learned-sigma rows too)" if info.learn_sigma else "")

    report.reinitialised = sorted(k for k in target if k not in new)
    missing = model.load_state_dict({**target, **new}, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys  # internal invariant
    log.info("converted DiT (%s): %d tensors transferred, %d derived, %d reinitialised", config.preset,
             len(report.transferred), len(report.derived), len(report.reinitialised))
    return ConversionResult(model=model, report=report)


def convert_dit_checkpoint(path: str, **kwargs) -> ConversionResult:
    """load_dit_state_dict(path) then convert_dit_state_dict(...)."""
    return convert_dit_state_dict(load_dit_state_dict(path), **kwargs)


SD_VAE_SCALE = 0.18215  # DiT's latents: SD VAE (ft-EMA) posterior sample x 0.18215, 8x downsampling
SD_VAE_FACTOR = 8


def import_dit_expert(source_path: str, store_or_dir, key_prefix: str, *, objective: str, text_dim: int,
                      text_encoder: str, keep_eps_head: bool = False, manifest_fields: dict | None = None,
                      **convert_kwargs) -> tuple[str, ConversionReport]:
    """Convert a DiT checkpoint file and save it as an expert (safetensors + manifest).

    The manifest declares time_input='discrete-999' (the network reads round(999 t), as DiT did)
    whatever the objective; keep_eps_head is only allowed for eps-predicting objectives.
    """
    from hddm_core.checkpoints.io import save_expert
    from hddm_core.manifests import sha256_bytes
    from hddm_core.diffusion.objectives import get_objective
    from hddm_core.diffusion.predictions import EPS

    declared = get_objective(objective, time_input=DIT_TIME_INPUT)
    if keep_eps_head and declared.prediction != EPS:
        raise ValueError(f"keep_eps_head keeps DiT's eps output rows; objective {objective!r} predicts "
                         f"{declared.prediction!r}, so its head must be reinitialised (keep_eps_head=False)")
    result = convert_dit_checkpoint(source_path, text_dim=text_dim, keep_eps_head=keep_eps_head, **convert_kwargs)
    with open(source_path, "rb") as f:
        source_hash = sha256_bytes(f.read())
    config = result.model.config
    fields = {
        "objective": objective, "time_input": DIT_TIME_INPUT, "text_encoder": text_encoder,
        "latent_space": "sd-vae", "latent_scale": SD_VAE_SCALE,
        "image_resolution": config.input_size * SD_VAE_FACTOR, "data_hash": f"dit-import:{source_hash}",
        "extra": {"converted_from": os.path.basename(source_path), "source_sha256": source_hash,
                  "t_star": result.report.t_star, "fold_null_class": result.report.fold_null_class,
                  "keep_eps_head": keep_eps_head, "transferred": len(result.report.transferred),
                  "derived": sorted(result.report.derived), "reinitialised": len(result.report.reinitialised)},
        **(manifest_fields or {}),
    }
    return save_expert(store_or_dir, key_prefix, result.model, fields), result.report
