"""Measure every comparison of the trained study on identical prompts and seeds, with intervals.

Two prompt sets: the all-cluster set (prompts round-robin over the K clusters; reference images from
every cluster) for the ensemble and routing comparisons, and the cluster-0 set for the same-cluster
DDPM/FM pair (threshold sweep in both orderings, native DDIM vs converted, per-t x0 error). Within a
set every variant uses the same prompts, seeds, guidance scale and Euler steps. Quality: Frechet
distance of Inception-v3 pool features projected to fd_dims (FD-proj, not FID); diversity: LPIPS
within a prompt's images when its weights are present, else pixel-RMS. Intervals: confidence.py.
"""
from __future__ import annotations

import logging
import types
from dataclasses import dataclass, field

import numpy as np
import torch

from hddm_core.pipeline.confidence import bootstrap_draws, grouped_rows, interval

log = logging.getLogger(__name__)


@dataclass
class Variant:
    name: str
    group: str  # "ensemble" (all-cluster set) | "pair" (cluster-0 set)
    features: np.ndarray  # [N, fd_dims]
    diversity: list  # per prompt
    images: torch.Tensor  # [N, 3, H, W] in [-1, 1]
    params: dict = field(default_factory=dict)
    safeguards: dict = field(default_factory=dict)


@dataclass
class PromptSet:
    captions: list
    cond: dict
    null_cond: dict
    seeds: list
    ref: tuple  # (mu, sigma) of the reference features
    real: torch.Tensor  # decoded real images
    real_latents: torch.Tensor
    real_cond: dict


@dataclass
class Measurements:
    variants: dict  # name -> Variant
    sets: dict  # "ensemble" | "pair" -> PromptSet
    draws: dict  # set -> bootstrap draws over its prompts
    diversity_name: str
    x0_error: dict  # {"t": [...], expert name: [[per-sample errors] per t]}
    images_per_prompt: int
    fd_dims: int

    def fd(self, name: str):
        """Statistic: FD of the variant restricted to drawn prompts (its images with them)."""
        from hddm_core.metrics.fid import frechet_distance

        v = self.variants[name]
        mu_r, sig_r = self.sets[v.group].ref
        k = self.images_per_prompt

        def stat(idx):
            f = v.features[grouped_rows(idx, k)]
            return frechet_distance(f.mean(0), np.cov(f, rowvar=False), mu_r, sig_r)
        return stat

    def div(self, name: str):
        d = np.asarray(self.variants[name].diversity, np.float64)
        return lambda idx: float(d[idx].mean())

    def interval(self, name: str, metric: str):
        v = self.variants[name]
        return interval(self.fd(name) if metric == "fd" else self.div(name), self.draws[v.group])


def _prompt_set(store, prep_prefix, clusters, n_prompts, cfg, decoder, features, proj) -> PromptSet:
    from hddm_core.data.cluster_data import ClusterDataset
    from hddm_core.pipeline.evaluation import _images, _prompts

    captions, tokens, mask, real = _prompts(store, prep_prefix, clusters, n_prompts, cfg.reference_images)
    reps = cfg.images_per_prompt
    cond = {"tokens": tokens.repeat_interleave(reps, 0), "mask": mask.repeat_interleave(reps, 0)}
    nt, nm = ClusterDataset(store, prep_prefix, clusters[0]).null_text()
    real_img = decoder.decode(real, 64)
    f = features(_images(real_img)) @ proj
    seeds = list(range(cfg.seed, cfg.seed + n_prompts * reps))
    # the real latents' own captions are not needed for the x0 error: the reference prompts condition it
    real_cond = {"tokens": tokens[:1].expand(real.shape[0], -1, -1), "mask": mask[:1].expand(real.shape[0], -1)}
    return PromptSet(captions, cond, {"tokens": nt[None], "mask": nm[None]}, seeds,
                     (f.mean(0), np.cov(f, rowvar=False)), real_img, real, real_cond)


def _diversity(x: torch.Tensor, reps: int) -> tuple[str, list]:
    from hddm_core.metrics.lpips_diversity import lpips_or_substitute

    by_prompt = {str(i): x[i * reps:(i + 1) * reps] for i in range(x.shape[0] // reps)}
    lp, px = lpips_or_substitute(by_prompt)
    m = lp if lp.ok else px
    return m.name, list(m.details["per_prompt"].values())


def _x0_errors(members, ps: PromptSet, ts, seed: int) -> dict:
    """Per-t x0-prediction error (mean squared, per sample) of each expert on real latents of its
    cluster: x_t on the sampler's linear path, each expert called at its SNR-matched time, x0_hat
    recovered without safeguards (the paper's complementary-weighting argument, sec. 3)."""
    from hddm_core.diffusion.conversion import map_to_expert_frame
    from hddm_core.diffusion.predictions import get_prediction
    from hddm_core.diffusion.safeguards import Safeguards, SafeguardStats
    from hddm_core.diffusion.schedules import LinearPath, get_schedule
    from hddm_core.diffusion.time_inputs import network_time

    x0 = ps.real_latents.float()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    out = {"t": list(ts)}
    for m in members:
        net = m.network if m.network is not None else m.loader()
        d = m.declaration
        errs = []
        for t in ts:
            tt = torch.full((x0.shape[0],), float(t), dtype=torch.float64)
            x = (1 - float(t)) * x0 + float(t) * eps
            x_e, t_e, ce = map_to_expert_frame(x, tt, LinearPath(), get_schedule(d.schedule))
            with torch.no_grad():
                pred = net(x_e, network_time(t_e, d.time_input).float(), ps.real_cond)
            x0_hat, _ = get_prediction(d.prediction).to_x0_eps(pred, x_e, ce, Safeguards.off(), SafeguardStats())
            errs.append((x0_hat.float() - x0).pow(2).flatten(1).mean(1).tolist())
        out[m.name] = errs
    return out


def measure(cfg, cs) -> Measurements:
    from hddm_core.diffusion.predictions import is_velocity
    from hddm_core.inference.loading import expert_member, load_ensemble
    from hddm_core.inference.native import native_ddim_sample
    from hddm_core.inference.routing import Routing
    from hddm_core.manifests import read_manifest
    from hddm_core.metrics.fid import InceptionFeatures, projection
    from hddm_core.pipeline.batched_sampling import sample_in_batches
    from hddm_core.pipeline.evaluation import _images, decoder_for_run
    from hddm_core.storage import open_store

    store = open_store(cfg.artifact_root)
    hetero = load_ensemble(cs.heterogeneous, cs.router)
    homo = load_ensemble(cs.homogeneous, cs.router)
    mono = expert_member(cs.monolith, name="monolith-fm")
    ddpm = expert_member(cs.heterogeneous[0], name="cluster0-ddpm")  # cluster 0 is the DDPM expert (objectives[0])
    if is_velocity(ddpm.declaration.prediction):
        raise ValueError(f"cluster 0's heterogeneous expert predicts {ddpm.declaration.prediction!r}; the pair "
                         "comparisons need a DDPM (eps) expert there: put a DDPM objective first")
    fm = expert_member(cs.homogeneous[0], name="cluster0-fm")
    prep = read_manifest(store, cs.prepare_prefix)
    decoder = decoder_for_run(prep, types.SimpleNamespace(vae_model=None, prepare_prefix=cs.prepare_prefix),
                              hetero.members, "cpu")
    features = InceptionFeatures(batch_size=64)
    proj = projection(2048, cfg.fd_dims)
    k = len(cs.heterogeneous)
    sets = {"ensemble": _prompt_set(store, cs.prepare_prefix, list(range(k)), k * cfg.prompts_per_cluster, cfg,
                                    decoder, features, proj),
            "pair": _prompt_set(store, cs.prepare_prefix, [0], cfg.pair_prompts, cfg, decoder, features, proj)}
    reps = cfg.images_per_prompt
    shape = tuple(sets["pair"].real_latents.shape[1:])
    variants: dict = {}
    div_name = ["pixel-RMS diversity"]

    def add(name, group, latents, params=None, res=None):
        x = decoder.decode(latents, 64)
        div_name[0], per_prompt = _diversity(x, reps)
        guards = res.safeguard_totals() if res is not None else {"(native DDIM)": "safeguards off"}
        variants[name] = Variant(name, group, features(_images(x)) @ proj, per_prompt, x, params or {}, guards)
        log.info("study: %s done", name)

    def sample(name, group, members, routing, router=None, router_time_input="continuous", **params):
        ps = sets[group]
        res = sample_in_batches(members, ps.seeds, shape, cond=ps.cond, null_cond=ps.null_cond, batch_size=64,
                                desc=name, router=router, routing=routing, cfg_scale=cfg.cfg_scale,
                                steps=cfg.sample_steps, router_time_input=router_time_input)
        add(name, group, res.samples, params, res)

    ens = dict(router=homo.router, router_time_input=homo.router_time_input)
    sample("homogeneous top-1", "ensemble", homo.members, Routing.top1(), **ens)
    sample("homogeneous top-2", "ensemble", homo.members, Routing.top_k(2), **ens)
    sample("homogeneous full", "ensemble", homo.members, Routing.full(), **ens)
    sample("heterogeneous top-2", "ensemble", hetero.members, Routing.top_k(2), router=hetero.router,
           router_time_input=hetero.router_time_input)
    sample("monolith", "ensemble", [mono], Routing.fixed([1.0]))
    pair = [ddpm, fm]  # index 0: DDPM, 1: FM
    for order, (high, low) in {"FM-first": ((1,), (0,)), "DDPM-first": ((0,), (1,))}.items():
        for tau in cfg.taus:
            sample(f"threshold {order} tau={tau:g}", "pair", pair, Routing.threshold(tau, low=low, high=high),
                   order=order, tau=tau)
    sample("cluster0 FM alone", "pair", [fm], Routing.fixed([1.0]))
    sample("cluster0 DDPM converted to velocity", "pair", [ddpm], Routing.fixed([1.0]))
    ps = sets["pair"]
    x = native_ddim_sample(ddpm.loader(), ddpm.declaration, ps.seeds, shape, steps=cfg.sample_steps, cond=ps.cond,
                           null_cond=ps.null_cond, cfg_scale=cfg.cfg_scale)
    add("cluster0 DDPM native DDIM", "pair", x)
    ts = [round(0.05 + 0.1 * i, 2) for i in range(10)]
    x0 = _x0_errors(pair, ps, ts, cfg.seed + 7)
    draws = {g: bootstrap_draws(len(s.captions), cfg.bootstrap, cfg.seed) for g, s in sets.items()}
    return Measurements(variants, sets, draws, div_name[0], x0, reps, cfg.fd_dims)
