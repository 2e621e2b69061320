"""Benchmark: one training step (forward + MSE + backward) of the HDDM expert DiT against diffusers'
PixArtTransformer2DModel of identical size, on the same batch, in the same process.

Prints (never asserts) the median of interleaved pair ratios ours/theirs (< 1 means ours is faster),
both median step times, and CPU MFU: model FLOPs per step (3 x the forward's matmul FLOPs, by the
formula in hddm_core.models.flops_per_forward) over a matmul peak measured in the same run.
Targets from the issue: ratio <= 1.0 and MFU >= 0.5 at B/2 width.

    python -m benchmarks.bench_dit                      # B/2 width, depth 2, 32x32x4 latents, batch 2
    python -m benchmarks.bench_dit --depth 12 --pairs 5  # the full B/2
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hddm_core.models import build_expert_model, count_parameters, expert_config, flops_per_forward  # noqa: E402
from hddm_core.models.presets import DIT_B_2  # noqa: E402


def build_pixart(cfg):
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
        in_channels=cfg.in_channels, out_channels=cfg.in_channels, num_layers=cfg.depth,
        cross_attention_dim=cfg.hidden_size, caption_channels=cfg.text_dim, sample_size=cfg.input_size,
        patch_size=cfg.patch_size, norm_type="ada_norm_single", use_additional_conditions=False,
        norm_elementwise_affine=False, norm_eps=1e-6, activation_fn="gelu-approximate", attention_bias=True)


def matmul_peak(n: int = 2048, reps: int = 5, dtype=torch.float32) -> float:
    """Best observed FLOP/s of an n x n x n matmul (the same-run reference for MFU)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def step_time(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=DIT_B_2)
    parser.add_argument("--depth", type=int, default=2, help="blocks (the preset's own depth when 0)")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--text-len", type=int, default=16)
    parser.add_argument("--text-dim", type=int, default=768)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for both models")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = dict(input_size=args.input_size, text_dim=args.text_dim)
    if args.depth:
        overrides["depth"] = args.depth
    cfg = expert_config(args.preset, **overrides)
    torch.manual_seed(0)
    ours, theirs = build_expert_model(cfg).train(), build_pixart(cfg).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    tokens = torch.randn(args.batch, args.text_len, cfg.text_dim, generator=g)
    t = torch.randint(0, 1000, (args.batch,), generator=g).float()
    target = torch.randn_like(x)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    def step_ours():
        ours.zero_grad(set_to_none=True)
        with autocast:
            out = ours(x, t, tokens)
        (out.float() - target).square().mean().backward()

    def step_theirs():
        theirs.zero_grad(set_to_none=True)
        with autocast:
            out = theirs(hidden_states=x, encoder_hidden_states=tokens, timestep=t,
                         added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
        (out.float() - target).square().mean().backward()

    for _ in range(2):  # warm-up
        step_ours()
        step_theirs()
    peak = matmul_peak(dtype=torch.bfloat16 if args.bf16 else torch.float32)
    ratios, t_ours, t_theirs = [], [], []
    for i in range(args.pairs):  # interleaved pairs, alternating which goes first
        first, second = (step_ours, step_theirs) if i % 2 == 0 else (step_theirs, step_ours)
        a, b = step_time(first), step_time(second)
        mine, other = (a, b) if i % 2 == 0 else (b, a)
        t_ours.append(mine)
        t_theirs.append(other)
        ratios.append(mine / other)
    peak = max(peak, matmul_peak(dtype=torch.bfloat16 if args.bf16 else torch.float32))
    flops = 3 * flops_per_forward(cfg, batch=args.batch, text_len=args.text_len)
    med_ours, med_theirs = statistics.median(t_ours), statistics.median(t_theirs)
    result = {
        "config": f"{cfg.preset} width {cfg.hidden_size}, depth {cfg.depth}, {cfg.num_patches} tokens, batch {args.batch}, "
                  f"text {args.text_len}x{cfg.text_dim}, {'bf16 autocast' if args.bf16 else 'fp32'}, "
                  f"{torch.get_num_threads()} threads",
        "params_ours": count_parameters(ours), "params_pixart": count_parameters(theirs),
        "step_s_ours": med_ours, "step_s_pixart": med_theirs, "ratio_median": statistics.median(ratios),
        "gflop_per_step": flops / 1e9, "matmul_peak_gflops": peak / 1e9,
        "mfu_ours": flops / med_ours / peak, "mfu_pixart": flops / med_theirs / peak,
    }
    print(result["config"])
    print(f"  parameters: ours {result['params_ours']:,}  diffusers PixArt {result['params_pixart']:,}")
    print(f"  step (fwd+bwd) median: ours {med_ours * 1e3:.1f} ms, PixArt {med_theirs * 1e3:.1f} ms; "
          f"ratio ours/PixArt (median of {args.pairs} interleaved pairs) {result['ratio_median']:.3f}")
    print(f"  model FLOPs/step {result['gflop_per_step']:.2f} G; same-run matmul peak {result['matmul_peak_gflops']:.1f} "
          f"GFLOP/s; CPU MFU ours {result['mfu_ours']:.2f}, PixArt {result['mfu_pixart']:.2f}")
    return result


if __name__ == "__main__":
    main()
