"""Per-step cost of Top-1 / Top-2 / Full against (selected expert forwards + router forward), and the
conversion + mixing overhead, with small real DiT experts (hddm_core.models, tiny-16) on CPU.

Figures are measured in one process, interleaved (median of repeats); printed, never asserted.
Run: python benchmarks/bench_ensemble.py [--batch 16] [--experts 4] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hddm_core.diffusion.conversion import ExpertDeclaration
from hddm_core.diffusion.predictions import EPS, VELOCITY
from hddm_core.inference import EnsembleExpertHandle, Routing, sample_ensemble
from hddm_core.models import build_expert_model, build_router, expert_config, router_config
from hddm_core.models.presets import TINY_16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preset", default=TINY_16)
    args = ap.parse_args()
    torch.manual_seed(0)
    B, K = args.batch, args.experts
    cfg = expert_config(args.preset)
    decls = [ExpertDeclaration(EPS, "ddpm-linear", "discrete-999"), ExpertDeclaration(VELOCITY, "linear", "continuous")]
    nets = [build_expert_model(cfg).eval() for _ in range(K)]
    members = [EnsembleExpertHandle(f"e{k}", decls[k % 2], nets[k]) for k in range(K)]
    router = build_router(router_config(args.preset, K)).eval()
    with torch.no_grad():  # a router head that prefers different experts for different samples
        router.head.linear.weight.normal_(0, 1.0)
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    cond = torch.randn(B, 8, cfg.text_dim)
    seeds = list(range(B))
    x = torch.randn(B, *shape)
    t_net = torch.full((B,), 500.0)

    def forward_cost(rows_per_expert):  # plain network forwards of exactly the rows the step ran (+ router)
        t0 = time.perf_counter()
        with torch.no_grad():
            router(x, t_net)
            for k, rows in enumerate(rows_per_expert):
                if rows:
                    nets[k](torch.randn(rows, *shape), torch.full((rows,), 500.0), torch.randn(rows, 8, cfg.text_dim))
        return time.perf_counter() - t0

    print(f"preset {args.preset}, K={K} experts, batch {B}, CFG on (cond + uncond rows in one call), 1 step each")
    print(f"{'routing':8s} {'step ms':>9s} {'forwards ms':>12s} {'ratio':>7s} {'overhead':>9s} {'rows/step':>10s}")
    for routing in (Routing.top1(), Routing.top_k(2), Routing.full()):
        steps_t, fwd_t = [], []
        rows = None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = sample_ensemble(members, seeds, shape, router=router, router_time_input="scaled-1000",
                                  routing=routing, cond=cond, cfg_scale=4.0, steps=1, grid=torch.tensor([0.6, 0.58], dtype=torch.float64))
            steps_t.append(time.perf_counter() - t0)
            rows = res.counts.expert_rows
            fwd_t.append(forward_cost(rows))
        s, f = statistics.median(steps_t), statistics.median(fwd_t)
        print(f"{routing.label:8s} {1e3 * s:9.2f} {1e3 * f:12.2f} {s / f:7.3f} {100 * (s - f) / s:8.1f}% {sum(rows):10d}")
    print("ratio = ensemble step / (router forward + forwards of the selected (sample, expert) rows);"
          " overhead = routing, dispatch, conversion, mixing and Euler update as a share of the step")


if __name__ == "__main__":
    main()
