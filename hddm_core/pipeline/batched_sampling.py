"""Sampling at scale for evaluation and `hddmp sample`: the ensemble sampler called on batches of
seeds (each sample's noise depends on its seed only, so batching changes no sample), on the chosen
device, with a progress bar over batches; then latents decoded to images in [-1, 1] in batches.

`merge_results` joins the per-batch EnsembleResults into one (usage and entropies weighted by batch
size, safeguard and dispatch counts summed) so reports see one run.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm


def _to(cond: Any, device) -> Any:
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: _to(v, device) for k, v in cond.items()}
    return cond.to(device)


def _rows(cond: Any, lo: int, hi: int) -> Any:
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: _rows(v, lo, hi) for k, v in cond.items()}
    return cond[lo:hi]


def merge_results(results: list):
    """One EnsembleResult from per-batch results of the same routing and steps."""
    if len(results) == 1:
        return results[0]
    sizes = torch.tensor([len(r.seeds) for r in results], dtype=torch.float64)
    w = sizes / sizes.sum()

    def weighted(name):  # [steps] or [steps, K] means over samples
        stack = torch.stack([getattr(r, name) for r in results])  # [batches, ...]
        shape = (-1,) + (1,) * (stack.dim() - 1)
        finite = torch.isfinite(stack)
        ws = torch.where(finite, w.reshape(shape), torch.zeros_like(stack))
        total = ws.sum(0)
        mean = (torch.where(finite, stack, torch.zeros_like(stack)) * ws).sum(0) / total.clamp_min(1e-300)
        return torch.where(total > 0, mean, torch.full_like(mean, float("nan")))

    counts = results[0].counts
    merged_counts = dataclasses.replace(
        counts, router_calls=sum(r.counts.router_calls for r in results),
        router_rows=sum(r.counts.router_rows for r in results),
        expert_calls=[sum(c) for c in zip(*(r.counts.expert_calls for r in results))],
        expert_rows=[sum(c) for c in zip(*(r.counts.expert_rows for r in results))])
    return dataclasses.replace(
        results[0], samples=torch.cat([r.samples for r in results]), usage=weighted("usage"),
        router_entropy=weighted("router_entropy"), weight_entropy=weighted("weight_entropy"),
        safeguards=sum(r.safeguards for r in results), counts=merged_counts,
        seeds=[s for r in results for s in r.seeds], pool_events=[e for r in results for e in r.pool_events])


def sample_in_batches(members: Sequence, seeds: Sequence[int], shape: Sequence[int], *, cond: Any, batch_size: int,
                      device: str = "cpu", desc: str = "sample", progress: bool = True, **sampler_kwargs):
    """sample_ensemble over batches of `batch_size` seeds on `device`; returns the merged result
    with its samples on the CPU."""
    from hddm_core.inference.ensemble_sampler import sample_ensemble

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    seeds = list(seeds)
    cond = _to(cond, device)
    results = []
    for lo in tqdm(range(0, len(seeds), batch_size), desc=desc, disable=not progress, leave=False):
        hi = min(lo + batch_size, len(seeds))
        res = sample_ensemble(members, seeds[lo:hi], shape, cond=_rows(cond, lo, hi), device=device, **sampler_kwargs)
        results.append(dataclasses.replace(res, samples=res.samples.detach().float().cpu()))
    return merge_results(results)
