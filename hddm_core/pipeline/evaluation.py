"""The evaluation stage: sample a set of trained experts (and router) in every requested routing mode
on identical seeds and prompts, measure, and write the report (hddm_core.pipeline.report) plus the cluster grid,
router and training pictures.

Prompts are captions (with their text tokens) drawn round-robin from the experts' clusters in the
prepare stage, from its held-out split when it has one (hddm_core.pipeline.fid_eval, which also stores
the reference statistics once and computes FID for `fid_samples`). Everything measured and drawn is
in pixels: the run's latent space (the prepare manifest's `latent`: pixel, or SD-VAE with its model
and scale) is decoded (hddm_core.data.latents), samples and real images alike. Sampling, decoding and feature extraction run on `device`, in
batches of `batch_size`, with progress bars. Quality: Frechet distance of Inception-v3 features
projected to `fd_dims` (a named small-sample variant, never called FID) against real images of the
same clusters; diversity and text alignment: hddm_core.metrics.sample_metrics (LPIPS within each
prompt's images beside pixel-RMS, CLIP score; each reported as unavailable, with the reason, when its
weights are absent). Each expert also samples its own cluster's prompts alone (`expert_grid_images`,
one grid each).
Output prefix: <evaluations_prefix>/<key[:16]>, key = hash(expert weights, router weights, data, config):
a second call for the same experts returns the existing manifest without sampling.
"""
from __future__ import annotations

import logging
import re
from typing import Callable, Optional

import torch

from hddm_core.manifests import StageManifest, completed, describe_outputs, hash_config, read_manifest, write_manifest
from hddm_core.storage import ArtifactStore

log = logging.getLogger(__name__)
STAGE = "evaluate"


def expert_folders(store: ArtifactStore, params) -> list[str]:
    """params.experts, else every expert folder under params.experts_prefix (its expert.json's folder)."""
    if params.experts:
        return list(params.experts)
    keys = [k for k in store.list(params.experts_prefix) if k.endswith("/expert.json")]
    if not keys:
        raise FileNotFoundError(f"no experts under {store.uri(params.experts_prefix)}; register or train some first")
    return [store.uri(k.rsplit("/", 1)[0]) for k in keys]


def routings_for(modes, members, has_router: bool, tau: float):
    """([(label, Routing)], ['<mode>: <why>' for each mode that does not apply to these experts])."""
    from hddm_core.inference.routing import Routing, RoutingUnavailable, routing_label

    predictions = [m.declaration.prediction for m in members]
    out, skipped = [], []
    for mode in modes:
        try:
            routing = Routing.from_name(mode, predictions=predictions, has_router=has_router, tau=tau)
        except RoutingUnavailable as exc:
            skipped.append(str(exc))
            continue
        out.append((routing_label(mode, tau=tau, num_experts=len(members)), routing))
    return out, skipped


def _prompts(store: ArtifactStore, prepare_prefix: str, clusters: list[int], n: int, n_real: int):
    """(captions, tokens [n, L, D], mask [n, L], real images [M, C, H, W]) from the clusters' training data."""
    from hddm_core.pipeline.fid_eval import TRAINING, datasets, prompts_from

    return prompts_from(store, prepare_prefix, datasets(store, prepare_prefix, clusters, TRAINING), n, n_real)


def decoder_for_run(prep, params, members, device: str):
    """The run's latent decoder; the experts must declare the latent space the prepare stage recorded."""
    from hddm_core.data.latents import latent_decoder

    latent = prep.config["latent"]
    for m in members:
        space, scale = m.manifest.get("latent_space"), float(m.manifest.get("latent_scale", 1.0))
        if space != latent["space"] or abs(scale - float(latent["scale"])) > 1e-9:
            raise ValueError(f"expert {m.name!r} declares latent_space {space!r} (scale {scale:g}) but the run's "
                             f"prepare manifest records {latent['space']!r} (scale {float(latent['scale']):g})")
    return latent_decoder(latent, device=device, vae_model=params.vae_model,
                          field=f"{params.prepare_prefix}/_manifest.json config.latent.model")


def _stats(images: torch.Tensor, features, dims: int):
    from hddm_core.metrics.fid import FEATURE_NET, RESIZE, feature_statistics, projection

    f = features(_images(images), progress=True)  # [N, 2048], batched on the features' device
    f = f @ projection(f.shape[1], dims)
    return feature_statistics(f, f"{FEATURE_NET}; {RESIZE}; orthonormal projection to {dims} (seed 0)")


def evaluate(store: ArtifactStore, params, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    from hddm_core.inference.loading import load_ensemble
    from hddm_core.metrics.fid import InceptionFeatures, fd_projected, project_stats
    from hddm_core.pipeline.fid_eval import FidCheck, eval_data, reference_stats
    from hddm_core.metrics.sample_metrics import SampleMetrics
    from hddm_core.pipeline.batched_sampling import sample_in_batches
    from hddm_core.pipeline.report import EvaluationResults, VariantResult, write_report

    from hddm_core.pipeline.params import resolve_device

    device = resolve_device(params.device)
    folders = expert_folders(store, params)
    ens = load_ensemble(folders, params.router, device=device)
    router_sha = ens.router_manifest.weights_sha256 if ens.router_manifest is not None else None
    prep = read_manifest(store, params.prepare_prefix)
    if prep is None:
        raise FileNotFoundError(f"no prepare manifest under {store.uri(params.prepare_prefix)}: evaluation draws its "
                                "prompts and reference images from the prepared data")
    # where and how fast it runs does not change what is measured: not part of the key
    cfg = params.model_dump(mode="json", exclude={"artifact_root", "force", "experts", "router", "device",
                                                  "batch_size", "vae_model"})
    inputs = {"experts": sorted(m.manifest["weights_sha256"] for m in ens.members), "router": router_sha or "",
              "data": prep.content_hash}
    key = hash_config({"config": cfg, "inputs": inputs})
    prefix = f"{params.evaluations_prefix}/{key[:16]}"
    if not params.force and (done := completed(store, prefix, cfg, inputs)) is not None:
        log.info("evaluation %s already done: %s", key[:12], store.uri(f"{prefix}/report.md"))
        return {"prefix": prefix, "content_hash": done.content_hash, "key": key, "counts": done.counts,
                "reused": True, "metrics": done.counts.get("metrics", {})}
    store.delete(f"{prefix}/_manifest.json")
    decoder = decoder_for_run(prep, params, ens.members, device)

    clusters = sorted({int(m.manifest["cluster_id"]) for m in ens.members if m.manifest.get("cluster_id") is not None})
    data = eval_data(store, params, prep, clusters or [0])  # the held-out split when the run has one
    captions, tokens, mask, real = data.captions, data.tokens, data.mask, data.real
    fid_check = FidCheck(store, params, prep, data) if params.fid_samples else None  # refuses before sampling
    reps = params.images_per_prompt
    cond = {"tokens": tokens.repeat_interleave(reps, 0), "mask": mask.repeat_interleave(reps, 0)}
    prompts = [c for c in captions for _ in range(reps)]
    seeds = list(range(params.seed, params.seed + len(prompts)))
    shape = tuple(real.shape[1:])
    features = InceptionFeatures(device=device, batch_size=params.batch_size)
    sample_metrics = SampleMetrics()  # LPIPS + CLIP models loaded once ($HDDM_LPIPS_WEIGHTS, $HDDM_CLIP_*)
    latent = prep.config["latent"]
    notes = [f"Scale: {len(ens.members)} experts, {len(prompts)} samples per routing mode "
             f"({params.n_prompts} prompts x {reps} seeds), {params.steps} Euler steps, CFG {params.cfg_scale:g}; "
             "numbers compare routing modes of this run only, never the paper's (DiT-XL/2 on LAION).",
             f"Latent space: {latent['space']} (model {latent.get('model')}, scale {float(latent['scale']):g}); "
             "samples and real images are decoded to pixels before every metric and picture.",
             f"Quality: Frechet distance of Inception-v3 pool features projected to {params.fd_dims} dimensions "
             f"against {len(real)} real images of the same clusters (not FID, which needs > 2048 samples).",
             data.note] + ([fid_check.note()] if fid_check else [])
    ref = project_stats(reference_stats(store, params, prep, data, decoder, features), params.fd_dims)  # stored once
    routings, skipped = routings_for(params.routing_modes, ens.members, ens.router is not None, params.tau)
    notes += [f"Skipped routing mode {s}" for s in skipped]
    if not routings:
        raise ValueError(f"no routing mode in {params.routing_modes} applies to {len(ens.members)} expert(s) "
                         f"{'with' if ens.router is not None else 'without'} a router: {skipped}")
    sampler = dict(router=ens.router, cfg_scale=params.cfg_scale, steps=params.steps,
                   router_time_input=ens.router_time_input)
    variants = []
    for i, (name, routing) in enumerate(routings):
        res = sample_in_batches(ens.members, seeds, shape, cond=cond, batch_size=params.batch_size, device=device,
                                desc=f"sample {name}", routing=routing, **sampler)
        x = decoder.decode(res.samples, params.batch_size, progress=True)  # [N, 3, H, W] in [-1, 1]
        metrics = {f"FD-inception-proj{params.fd_dims}": fd_projected(_stats(x, features, params.fd_dims), ref)}
        if fid_check is not None:
            metrics["FID"] = fid_check.measure(name, routing, ens.members, sampler, decoder, features, device, shape)
        by_prompt = {f"{k}:{p}": x[k * reps:(k + 1) * reps] for k, p in enumerate(captions)}
        metrics.update(sample_metrics(by_prompt, x, prompts))
        variants.append(VariantResult(name, "routing", metrics, res, x, prompts, params=routing.to_dict()))
        log.info("evaluate %s: %s", name, {k: str(v) for k, v in metrics.items()})
        if progress is not None:
            progress(i + 1, len(routings))
    results = EvaluationResults("HDDM evaluation", variants, f"FD-inception-proj{params.fd_dims}",
                                sample_metrics.diversity, seeds, notes)
    out = store.child(prefix)
    write_report(out, results)
    extras = _extra_pictures(store, out, params, ens)
    extras += expert_grids(store, out, params, ens, decoder, device, shape)
    report = out.read_bytes("report.md").decode() + "\n## Clusters, router and experts\n\n" + "\n".join(extras) + "\n"
    out.write_bytes("report.md", report.encode())
    summary = {v.name: {k: (m.value if m.ok else None) for k, m in v.metrics.items()} for v in variants}
    outputs = [k[len(prefix) + 1:] for k in store.list(prefix) if not k.endswith("_manifest.json")]
    counts = {"samples_per_mode": len(prompts), "modes": [v.name for v in variants], "experts": len(ens.members),
              "latent_space": latent["space"], "metrics": summary}
    manifest = StageManifest(stage=STAGE, config=cfg, config_hash=hash_config(cfg), inputs=inputs,
                             outputs=describe_outputs(store, prefix, outputs), counts=counts)
    write_manifest(store, prefix, manifest)
    return {"prefix": prefix, "content_hash": manifest.content_hash, "key": key, "counts": counts, "reused": False,
            "metrics": summary}


def expert_grids(store: ArtifactStore, out: ArtifactStore, params, ens, decoder, device: str, shape) -> list[str]:
    """Each expert alone (weight 1) on its own cluster's prompts: grids/expert_<name>.png."""
    from hddm_core.inference.routing import Routing
    from hddm_core.pipeline.batched_sampling import sample_in_batches
    from hddm_core.pipeline.report import image_grid

    n = params.expert_grid_images
    if n == 0:
        return []
    lines = []
    for member in ens.members:
        cluster = member.manifest.get("cluster_id")
        captions, tokens, mask, _ = _prompts(store, params.prepare_prefix, [int(cluster or 0)], n, 1)
        res = sample_in_batches([member], list(range(params.seed, params.seed + n)), shape,
                                cond={"tokens": tokens, "mask": mask}, batch_size=params.batch_size, device=device,
                                desc=f"expert {member.name}", routing=Routing.fixed([1.0]), cfg_scale=params.cfg_scale,
                                steps=params.steps)
        x = decoder.decode(res.samples, params.batch_size)
        key = f"grids/expert_{re.sub(r'[^A-Za-z0-9._-]+', '-', member.name)}.png"
        out.write_bytes(key, image_grid(x, captions, columns=min(n, 8)))
        lines.append(f"- {member.name} alone, cluster {cluster} prompts: [samples]({key})")
    return lines


def _images(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [N, 3, H, W] uint8 for Inception


def _extra_pictures(store: ArtifactStore, out: ArtifactStore, params, ens) -> list[str]:
    """Copy the cluster grid, router evaluation and expert loss curves beside the report."""
    lines = []
    pic = f"{params.cluster_prefix}/clusters.png"
    if store.exists(pic):
        out.write_bytes("clusters.png", store.read_bytes(pic))
        lines.append("![cluster grid](clusters.png)")
    if ens.router_manifest is not None and params.router:
        router = ArtifactStore(params.router)
        if router.exists("evaluation.png"):
            out.write_bytes("router_evaluation.png", router.read_bytes("evaluation.png"))
            lines.append("![router accuracy and calibration over t](router_evaluation.png)")
    for i, loc in enumerate(params.experts or []):
        src = ArtifactStore(loc)
        if src.exists("loss_curve.png"):
            out.write_bytes(f"plots/loss_expert{i}.png", src.read_bytes("loss_curve.png"))
            parts = loc.rstrip("/").split("/")
            name = parts[-2] if parts[-1] == "expert" and len(parts) > 1 else parts[-1]
            lines.append(f"- [{name}: training loss](plots/loss_expert{i}.png)")
    return lines
