"""Benchmark: the demo's experts trained one after the other (local_trainers=1) against concurrently
(one trainer process per core, hddm_flows.local_fan_out), in the same run, on the same prepared data.

The demo's data stages run once, in this process, without Prefect (as tests/orchestration's
prepared_run); the two training passes then run under one ephemeral Prefect API (started first, so
neither pass pays for it), each on its own copy of the prepared data so neither reuses the other's
experts. Prints wall time, process CPU time (this process and its reaped children) and the load average
around each pass, and the ratio of wall times. Never asserts: on a shared machine the ratio depends on
what else runs (read the load average printed with it).

    python -m benchmarks.bench_local_trainers                # the demo preset: 4 experts, 1000 steps each
    python -m benchmarks.bench_local_trainers --steps 100    # fewer steps per expert
    python -m benchmarks.bench_local_trainers --trainers 2   # the concurrent pass with 2 processes
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time

from hddm_flows.environment import apply_defaults


def cpu_seconds() -> float:
    """User + system CPU of this process and of its children that have exited (the trainer pool)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def prepare(root: str, steps: int | None):
    """The demo's PipelineParams under `root`, its data stages run (no Prefect)."""
    from hddm_core.pipeline import stages
    from hddm_core.pipeline.params import demo_params

    params = demo_params(root)
    if steps is not None:
        training = params.expert_training
        params = params.model_copy(update={"expert_training": training.model_copy(update={
            "steps": steps, "checkpoint_interval": min(training.checkpoint_interval, steps)})})
    for name, sub in (("download", params.download), ("recaption", params.recaption), ("embed", params.embed),
                      ("cluster", params.cluster), ("prepare", params.prepare)):
        stages.STAGES[name](params.stage(sub))
    return params


def timed_pass(label: str, jobs, trainers: int) -> float:
    from hddm_flows.local_fan_out import train_experts_locally

    before_load, cpu0, t0 = load(), cpu_seconds(), time.perf_counter()
    refs = train_experts_locally(jobs, local_trainers=trainers)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    assert len(refs) == len(jobs)
    print(f"{label:<28} wall {wall:8.1f} s   CPU {cpu:8.1f} s   load avg before {before_load}, after {load()}",
          flush=True)
    return wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="training steps per expert (default: the demo's)")
    ap.add_argument("--trainers", type=int, default=None,
                    help="processes of the concurrent pass (default: one per core, at most one per expert)")
    ap.add_argument("--keep", help="folder to keep the artifacts in (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    work = args.keep or tempfile.mkdtemp(prefix="hddm-bench-trainers-")
    apply_defaults(PREFECT_HOME=os.path.join(work, "prefect-home"), MPLBACKEND="Agg")
    import torch

    torch.set_num_threads(int(os.environ.get("HDDM_TORCH_THREADS", "1")))  # as `hddmp demo`
    from hddm_core.pipeline import stages
    from hddm_flows.local_fan_out import api_url, trainer_count

    try:
        t0 = time.perf_counter()
        params = prepare(os.path.join(work, "sequential"), args.steps)  # reused when --keep names a prepared one
        k = stages.n_clusters(params, params.prepare.prefix)
        seq_jobs = [params.expert_params(c) for c in range(k)]
        conc_jobs = [j.model_copy(update={"artifact_root": os.path.join(work, "concurrent")}) for j in seq_jobs]
        shutil.rmtree(os.path.join(work, "sequential", seq_jobs[0].runs_prefix), ignore_errors=True)  # train afresh
        shutil.rmtree(os.path.join(work, "concurrent"), ignore_errors=True)
        shutil.copytree(os.path.join(work, "sequential"), os.path.join(work, "concurrent"))
        n = trainer_count(args.trainers, conc_jobs)
        print(f"{k} experts x {params.expert_training.steps} steps ({params.expert_training.architecture}, batch "
              f"{params.expert_training.batch_size}); data prepared in {time.perf_counter() - t0:.0f} s; "
              f"{os.cpu_count()} CPUs; Prefect API {api_url()}", flush=True)
        seq = timed_pass("sequential (1 trainer)", seq_jobs, 1)
        conc = timed_pass(f"concurrent ({n} processes)", conc_jobs, n)
        print(f"wall ratio concurrent/sequential {conc / seq:.2f} (speed-up {seq / conc:.2f}x)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
