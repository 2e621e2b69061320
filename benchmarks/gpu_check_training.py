"""GPU check of the training step: bf16 autocast, DiT-B/2 and DiT-XL/2 experts at 256 px
(32 x 32 x 4 SD-VAE latents), 77 text tokens of width 768, through hddm_core.training's loop, each
with and without gradient checkpointing (every DiT block recomputed in backward): peak memory and
throughput of both, the figures docs/paper-recipe.md asks for.

Prints, per preset: parameters, batch, step time, images/s, and MFU = model FLOPs per step
(3 x forward matmul FLOPs, hddm_core.models.flops_per_forward) / step time / peak, against both
a bf16 matmul peak measured in the same run and the nominal peak given by --peak-tflops.
Timed: data, autocast forward/backward, grad clipping and its finiteness check, AdamW, EMA;
checkpoint writes are not timed (see benchmarks/bench_training.py for the loop's overhead).

    python -m benchmarks.gpu_check_training                  # on a GPU: B/2 and XL/2
    python -m benchmarks.gpu_check_training --smoke          # CPU, tiny-16, a few steps (CI-sized)
    python -m benchmarks.gpu_check_training --compile        # also torch.compile the forward
    python -m benchmarks.gpu_check_training --presets XL/2 --batch 32 --checkpointing on   # one setting only
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hddm_core.diffusion.objectives import FLOW_MATCHING  # noqa: E402
from hddm_core.models import count_parameters, expert_config, flops_per_forward  # noqa: E402
from hddm_core.models.presets import DIT_B_2, DIT_XL_2, TINY_16  # noqa: E402
from hddm_core.training.config import ExpertTrainConfig  # noqa: E402
from hddm_core.training.expert_trainer import build_loop  # noqa: E402

from benchmarks.synthetic_data import SyntheticExpertData  # noqa: E402
from hddm_core.training.loop import to_device  # noqa: E402


def sig(value: float) -> float:
    return float(f"{value:.3g}")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype, n: int, repeats: int = 10) -> float:
    """Best-of-repeats TFLOP/s of an n x n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e12)
    return best


def check(preset, args, device, peak_measured, checkpointing: bool):
    mcfg = expert_config(preset, in_channels=args.channels, input_size=args.latent, text_dim=args.text_dim)
    data = SyntheticExpertData(max(4 * args.batch, 64), mcfg.in_channels, mcfg.input_size, args.tokens, mcfg.text_dim)
    cfg = ExpertTrainConfig(architecture=preset, latent_space="sd-vae" if args.channels == 4 else "pixel",
                            latent_channels=args.channels, latent_size=args.latent, image_resolution=args.latent * 8,
                            text_dim=args.text_dim, text_encoder="synthetic-tokens", steps=10**6,
                            batch_size=args.batch, lr=1e-4, checkpoint_interval=10**6, device=str(device),
                            precision=args.precision, compile=args.compile, objective=FLOW_MATCHING,
                            ema_decay=0.9999, progress=False, loss_plot=False, num_workers=args.workers,
                            gradient_checkpointing=checkpointing)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as root:
        loop = build_loop(cfg, data, root)  # the step-0 checkpoint is written by run(), not here
        batches = loop._batches(0)
        times = []
        for i in range(args.warmup + args.steps):
            _, batch = next(batches)
            sync(device)
            t0 = time.perf_counter()
            loss = loop._one_step(to_device(batch, device))
            sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        params = count_parameters(loop.model)
        mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        del loop
    step = statistics.median(times)
    flops = 3 * flops_per_forward(mcfg, batch=args.batch, text_len=args.tokens)
    achieved = flops / step / 1e12
    out = {"preset": preset, "gradient_checkpointing": checkpointing, "params_M": round(params / 1e6, 1),
           "batch": args.batch, "precision": args.precision,
           "compile": args.compile, "step_s": round(step, 4), "images_per_s": round(args.batch / step, 1),
           "model_TFLOPs": sig(achieved), "MFU_vs_measured_peak": sig(achieved / peak_measured),
           "MFU_vs_nominal_peak": sig(achieved / args.peak_tflops) if args.peak_tflops else None,
           "max_mem_GiB": sig(mem) if mem is not None else None, "last_loss": sig(float(loss))}
    print(json.dumps(out), flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=[DIT_B_2, DIT_XL_2])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=77)
    ap.add_argument("--text-dim", type=int, default=768)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--checkpointing", choices=["both", "on", "off"], default="both",
                    help="gradient checkpointing settings to measure [default: both]")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="nominal dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny-16 at 16 px, 3 steps: checks the script runs")
    args = ap.parse_args()
    if args.smoke:
        args.presets, args.batch, args.latent, args.channels = [TINY_16], 4, 16, 3
        args.tokens, args.text_dim, args.steps, args.warmup, args.peak_tflops = 8, 384, 3, 1, 0.0
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --smoke for the CPU check")
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak(device, dtype, 8192 if device.type == "cuda" else 1024)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(json.dumps({"device": name, "torch": torch.__version__, "measured_matmul_peak_TFLOPs": sig(peak),
                      "nominal_peak_TFLOPs": args.peak_tflops}), flush=True)
    modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.checkpointing]
    for preset in args.presets:
        for checkpointing in modes:
            try:
                check(preset, args, device, peak, checkpointing)
            except torch.cuda.OutOfMemoryError:
                print(json.dumps({"preset": preset, "gradient_checkpointing": checkpointing, "batch": args.batch,
                                  "error": "CUDA out of memory"}), flush=True)
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
