"""Benchmark: images/s of the training loop (hddm_core.training) against a minimal plain-PyTorch
loop on the same model, batch and objective, in the same process, interleaved.

Ours: TrainingLoop.run with everything on (sample order, caption dropout, objective, AdamW with
warm-up, grad clipping + norm check, EMA, loss guard, tqdm, checkpoints with the loss-curve PNG
every --ckpt-every steps, amortised). Reference: pre-collated batches, FM loss written inline,
backward, AdamW step; nothing else. Prints (never asserts) both rates and the loop's overhead;
goal from the issue: overhead within 10 %.

    python -m benchmarks.bench_training                       # tiny DiT (32 px), batch 16
    python -m benchmarks.bench_training --preset tiny-16 --rounds 3 --steps 40
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hddm_core.diffusion.objectives import FLOW_MATCHING  # noqa: E402
from hddm_core.models import build_expert_model, count_parameters, expert_config  # noqa: E402
from hddm_core.models.presets import TINY  # noqa: E402
from hddm_core.training.config import ExpertTrainConfig  # noqa: E402
from hddm_core.training.expert_trainer import build_loop  # noqa: E402

from benchmarks.synthetic_data import SyntheticExpertData  # noqa: E402


def reference_steps(model, opt, data, batch, steps, gen):
    """Minimal flow-matching loop: x_t = (1 - t) x0 + t eps, target eps - x0."""
    n = len(data)
    for _ in range(steps):
        idx = torch.randint(n, (batch,), generator=gen)
        x0, tok, mask = data.x[idx], data.tok[idx], data.mask[idx]
        t = torch.rand(batch, generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        x_t = (1 - t).view(-1, 1, 1, 1) * x0 + t.view(-1, 1, 1, 1) * eps
        out = model(x_t, 1000 * t, {"tokens": tok, "mask": mask})
        loss = (out - (eps - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=TINY)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=25, help="steps per round and per side")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--ckpt-every", type=int, default=50, help="our loop's checkpoint interval (amortised)")
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args()

    mcfg = expert_config(args.preset)
    data = SyntheticExpertData(512, mcfg.in_channels, mcfg.input_size, args.tokens, mcfg.text_dim)
    total = args.steps * args.rounds
    cfg = ExpertTrainConfig(architecture=args.preset, latent_channels=mcfg.in_channels, latent_size=mcfg.input_size,
                            text_dim=mcfg.text_dim, steps=total, batch_size=args.batch, lr=1e-4, warmup_steps=10,
                            checkpoint_interval=args.ckpt_every, keep_checkpoints=2, objective=FLOW_MATCHING,
                            caption_dropout=0.1, spike_factor=10.0, progress=True)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as root:
        loop = build_loop(cfg, data, root)
        torch.manual_seed(0)
        ref_model = build_expert_model(mcfg)
        ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(1)
        print(f"model {args.preset}: {count_parameters(ref_model) / 1e6:.2f}M parameters, batch {args.batch}, "
              f"{torch.get_num_threads()} threads; ours checkpoints every {args.ckpt_every} steps")
        loop.run(until_step=2)  # warm-up both (first-step allocations, step-0 checkpoint)
        reference_steps(ref_model, ref_opt, data, args.batch, 2, gen)
        pairs_wall, pairs_cpu, ours, ref = [], [], [], []
        for r in range(args.rounds):
            w0, c0 = time.perf_counter(), time.process_time()
            loop.run(until_step=2 + (r + 1) * args.steps)
            w1, c1 = time.perf_counter(), time.process_time()
            reference_steps(ref_model, ref_opt, data, args.batch, args.steps, gen)
            w2, c2 = time.perf_counter(), time.process_time()
            ours.append(args.steps * args.batch / (w1 - w0))
            ref.append(args.steps * args.batch / (w2 - w1))
            pairs_wall.append((w2 - w1) / (w1 - w0))  # ours images/s over reference images/s
            pairs_cpu.append((c2 - c1) / (c1 - c0))
        cpu, wall = statistics.median(pairs_cpu), statistics.median(pairs_wall)
        print(f"images/s (wall) per round  ours: {[round(v, 1) for v in ours]}  reference: {[round(v, 1) for v in ref]}")
        print(f"median of interleaved pairs, ours/reference throughput: CPU time {cpu:.3f}, wall {wall:.3f}")
        print(f"loop overhead (CPU time) {100 * (1 / cpu - 1):+.1f} %  (goal: within 10 %; checkpoints amortised "
              f"every {args.ckpt_every} steps)")

if __name__ == "__main__":
    main()
