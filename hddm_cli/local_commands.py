"""Commands that are not pipeline stages: sampling an ensemble, the paper-comparison study, and the
local Prefect stack (`up` / `down`)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from hddm_core.inference.routing import AUTO, CHOICES_WITH_AUTO
from hddm_core.pipeline.params import Device, resolve_device

from .options import add_model_options, model_from_args


class SampleParams(BaseModel):
    """Sample an ensemble of experts (and a router) for a few prompts; writes one captioned PNG grid."""

    model_config = ConfigDict(extra="forbid")

    prompts: list[str] = Field(..., min_length=1, description="Captions to sample (quote each one).")
    artifact_root: Optional[str] = Field(None, description="Run root (local folder or s3://...); empty: "
                                                           "$HDDM_ARTIFACT_ROOT, else ./artifacts.")
    experts: list[str] = Field([], description="Expert folders/URLs; empty = every expert under experts_prefix.")
    experts_prefix: str = Field("experts/registry", description="Where the run's experts are.")
    router: Optional[str] = Field(None, description="Router folder/URL; empty = no router.")
    routing: Literal[CHOICES_WITH_AUTO] = Field(
        AUTO, description="auto: top-2 with a router, else threshold (FM first) when DDPM and FM experts are "
                            "present, else a uniform mix.")
    tau: float = Field(0.3, ge=0, le=1, description="Threshold router switch time.")
    images_per_prompt: int = Field(4, ge=1, le=64)
    steps: int = Field(20, ge=1, le=1000, description="Euler steps.")
    cfg_scale: float = Field(1.5, ge=0, le=50, description="Classifier-free guidance scale.")
    seed: int = Field(0, ge=0)
    prepare_prefix: str = Field("prepare", description="The run's prepare stage (its text encoder and latent space).")
    device: Device = Field(Device.__args__[0], description="Where sampling and decoding run (auto: cuda if visible).")
    batch_size: int = Field(32, ge=1, le=4096, description="Samples per sampler call and per VAE decode.")
    vae_model: Optional[str] = Field(None, description="Decode latents with the VAE from here (a local copy); empty = "
                                                       "the prepare manifest's latent.model.")
    out: str = Field("samples.png", description="Output PNG path.")


def _sample(args) -> int:
    from hddm_core.data.factories import build_text_encoder
    from hddm_core.data.cluster_data import training_inputs_info
    from hddm_core.pipeline.batched_sampling import sample_in_batches
    from hddm_core.pipeline.evaluation import decoder_for_run, expert_folders, routings_for
    from hddm_core.inference.loading import load_ensemble
    from hddm_core.inference.routing import resolve_name
    from hddm_core.manifests import read_manifest
    from hddm_core.pipeline.report import image_grid
    from hddm_core.storage import open_store

    p: SampleParams = model_from_args(SampleParams, args.specs, args)
    device = resolve_device(p.device)
    store = open_store(p.artifact_root)
    ens = load_ensemble(expert_folders(store, p), p.router, device=device)
    info = training_inputs_info(store, p.prepare_prefix)
    decoder = decoder_for_run(read_manifest(store, p.prepare_prefix), p, ens.members, device)
    encoder = build_text_encoder(info["text"], device="cpu", check_recorded=True)
    prompts = [c for c in p.prompts for _ in range(p.images_per_prompt)]
    tokens, mask = encoder.encode(prompts)
    cfg = ens.members[0].manifest["config"]
    shape = (int(cfg["in_channels"]), int(cfg["input_size"]), int(cfg["input_size"]))
    mode = resolve_name(p.routing, has_router=ens.router is not None,
                        predictions=[m.declaration.prediction for m in ens.members])
    routings, skipped = routings_for([mode], ens.members, ens.router is not None, p.tau)
    if not routings:
        raise ValueError(f"routing {mode!r} does not apply here: {skipped[0]}")
    name, routing = routings[0]
    res = sample_in_batches(ens.members, list(range(p.seed, p.seed + len(prompts))), shape,
                            cond={"tokens": tokens, "mask": mask}, batch_size=p.batch_size, device=device,
                            desc=f"sample {name}", router=ens.router, routing=routing, cfg_scale=p.cfg_scale,
                            steps=p.steps, router_time_input=ens.router_time_input)
    images = decoder.decode(res.samples, p.batch_size, progress=True)  # [N, 3, H, W] in [-1, 1]
    png = image_grid(images, prompts, columns=p.images_per_prompt)
    os.makedirs(os.path.dirname(os.path.abspath(p.out)), exist_ok=True)
    with open(p.out, "wb") as f:
        f.write(png)
    print(f"sampled {len(prompts)} images with {len(ens.members)} experts ({name}, {p.steps} steps, "
          f"{info['latent']['space']} decoded) -> {p.out}")
    return 0


def _study(args) -> int:
    if args.closed_form:
        return _closed_form_study(args)
    import shlex
    import sys

    from hddm_core.pipeline.study_trained import TrainedStudyConfig, run_trained_study

    torch_threads()
    cfg = TrainedStudyConfig(
        artifact_root=args.out or "artifacts/study-trained", clusters=args.clusters, expert_steps=args.expert_steps,
        router_steps=args.router_steps, emoji=args.emoji, resolution=args.resolution,
        prompts_per_cluster=args.prompts_per_cluster, pair_prompts=args.pair_prompts,
        images_per_prompt=args.images_per_prompt, sample_steps=args.sample_steps, cfg_scale=args.cfg_scale,
        fd_dims=args.fd_dims, reference_images=args.reference_images, bootstrap=args.bootstrap, seed=args.seed,
        architecture=args.architecture, latent_space=args.latent_space,
        **({"taus": tuple(args.taus)} if args.taus else {}))
    command = "hddmp " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "hddmp study"
    print(f"results: {run_trained_study(cfg, args.docs, command)}")
    return 0


def torch_threads() -> None:
    """Tiny models gain nothing from intra-op threads on a shared CPU (flows/demo.py measured why)."""
    import torch

    torch.set_num_threads(int(os.environ.get("HDDM_TORCH_THREADS", "1")))


def _closed_form_study(args) -> int:
    from hddm_core.pipeline.report import write_report
    from hddm_core.pipeline.study import gaussian_study_inputs, print_table, run_study

    if args.seeds < 16 or args.sample_steps < 1:
        raise ValueError(f"--seeds must be >= 16 and --sample-steps >= 1, got {args.seeds} and {args.sample_steps}")
    results = run_study(gaussian_study_inputs(), range(args.seeds), steps=args.sample_steps, progress=True)
    print_table(results)
    print(f"report: {write_report(args.out or 'artifacts/study', results)}")
    return 0


def _import_dit(args) -> int:
    """A public DiT checkpoint -> a self-describing expert initialisation (safetensors + expert.json)."""
    from hddm_core.checkpoints.dit_import import import_dit_expert
    from hddm_core.diffusion.objectives import get_objective
    from hddm_core.diffusion.predictions import EPS

    fields, text_dim, text_encoder = {}, args.text_dim, args.text_encoder
    if args.run:
        from hddm_core.data.cluster_data import training_inputs_info
        from hddm_core.storage import open_store

        info = training_inputs_info(open_store(args.run), args.prepare_prefix)
        lat = info["latent"]
        fields = dict(latent_space=lat["space"], latent_scale=float(lat["scale"]), image_resolution=int(lat["resolution"]))
        text_dim, text_encoder = int(info["text"]["width"]), info["text"]["encoder"]
    keep_eps = get_objective(args.objective).prediction == EPS if args.keep_eps_head is None else args.keep_eps_head
    folder = os.path.abspath(args.out) if "://" not in args.out else args.out
    parent, _, name = folder.rstrip("/").rpartition("/")
    uri, report = import_dit_expert(args.source, parent, name, objective=args.objective, text_dim=text_dim,
                                    text_encoder=text_encoder, keep_eps_head=keep_eps, num_heads=args.num_heads,
                                    manifest_fields=fields)
    print(f"converted {args.source}: {len(report.transferred)} tensors transferred, {len(report.derived)} derived, "
          f"{len(report.reinitialised)} new -> {uri}")
    print(f"train from it: hddmp expert train --objective {args.objective} --init {uri}")
    return 0


def add_import_dit_parser(esub) -> None:
    from hddm_core.diffusion.objectives import FLOW_MATCHING, OBJECTIVE_NAMES

    p = esub.add_parser("import-dit", help="convert a public DiT checkpoint (DiT-XL-2-256x256.pt layout) into a "
                                           "self-describing expert initialisation",
                        description="Convert a class-conditional DiT checkpoint (.pt read with torch.load("
                                    "weights_only=True), or .safetensors) into a text-conditioned AdaLN-Single expert "
                                    "(hddm_core.checkpoints.dit_import): safetensors + expert.json declaring "
                                    "time_input discrete-999. Use it as --init of `hddmp expert train`.")
    p.add_argument("source", help="DiT checkpoint file (.pt/.pth/.safetensors)")
    p.add_argument("--out", required=True, help="output folder (or store URL) for the expert initialisation")
    p.add_argument("--objective", choices=list(OBJECTIVE_NAMES), default=FLOW_MATCHING,
                   help="the objective the expert will train with [default: %(default)s]")
    p.add_argument("--run", default=None, help="artifact root of the run: take its latent space and text encoder "
                                               "from its prepare stage [default: SD-VAE 256 px, --text-*]")
    p.add_argument("--prepare-prefix", default="prepare", help="the run's prepare prefix [default: %(default)s]")
    p.add_argument("--text-dim", type=int, default=768, help="text token width without --run [default: %(default)s, "
                                                             "CLIP ViT-L/14]")
    p.add_argument("--text-encoder", default="openai/clip-vit-large-patch14",
                   help="text encoder declared without --run [default: %(default)s]")
    p.add_argument("--num-heads", type=int, default=None, help="attention heads [default: the DiT preset's]")
    p.add_argument("--keep-eps-head", action=argparse.BooleanOptionalAction, default=None,
                   help="keep DiT's eps output rows [default: yes for eps objectives, else no]")
    p.set_defaults(func=_import_dit)


# -- the local Prefect stack ---------------------------------------------------------------------------------
def _default_home() -> str:
    return os.environ.get("HDDM_PREFECT_HOME") or os.path.join(".hddm", "prefect")


def _up(args) -> int:
    from hddm_infra.local_stack import StackAlreadyRunning
    from hddm_infra.up import up  # deploys the repository's prefect.yaml (hddm_infra.up.project_root)

    try:
        stack = up(os.path.abspath(args.home), args.port, args.artifact_root, args.deploy or None,
                   gpu_workers=not args.no_gpu_workers)
    except StackAlreadyRunning as exc:
        print(f"hddmp up: {exc}", file=sys.stderr)
        return 1
    print(f"Prefect UI: http://127.0.0.1:{stack.port}   (API {stack.api_url})")
    print(f"server pid {stack.server_pid}, worker pids {stack.worker_pids}")
    print(f"use it from this shell: export PREFECT_API_URL={stack.api_url}")
    print(f"stop it: hddmp down --home {args.home}")
    return 0


def _down(args) -> int:
    from hddm_infra.local_stack import LocalStack

    stack = LocalStack.load(os.path.abspath(args.home))
    stack.stop()  # runs in flight are cancelled first, so none stays Running
    print(f"stopped the local Prefect stack recorded in {args.home} (runs in flight cancelled; scheduled runs "
          "wait for the next `hddmp up`)")
    return 0


def add_local_parsers(sub) -> None:
    sample = sub.add_parser("sample", help="sample an ensemble of experts for your prompts (a captioned PNG grid)",
                            description=SampleParams.__doc__)
    sample.set_defaults(func=_sample, specs=add_model_options(sample, SampleParams))

    study = sub.add_parser(
        "study", help="the paper's comparisons on trained experts (baselines, routing, tau sweep, conversion) -> "
                      "docs/results.md; --closed-form: the Gaussian-mixture check with exact experts",
        description="Default: train (or reuse) a heterogeneous ensemble, the homogeneous all-FM and monolith "
                    "baselines and a router on the embedded data, evaluate every comparison on identical prompts "
                    "and seeds with bootstrap intervals, and write --docs/results.md with the paper's rows "
                    "(a benchmark: minutes to hours). --closed-form: the closed-form check instead - ideal experts "
                    "on a 2-D Gaussian mixture with the exact router (tests routing/conversion/integration only; "
                    "no training error exists there).")
    study.add_argument("--closed-form", action="store_true",
                       help="run the Gaussian-mixture closed-form check (exact experts), not the trained study")
    study.add_argument("--out", default=None, help="artifact root (trained) or report folder (--closed-form) "
                                                   "[default: artifacts/study-trained or artifacts/study]")
    study.add_argument("--docs", default="docs", help="where results.md and results/ are written [default: %(default)s]")
    study.add_argument("--seeds", type=int, default=512, help="--closed-form: samples per variant [default: %(default)s]")
    study.add_argument("--sample-steps", "--steps", type=int, default=30, help="Euler steps [default: %(default)s]")
    for flag, default, what in (("--clusters", 4, "K clusters = experts"), ("--expert-steps", 1000, "steps per expert"),
                                ("--router-steps", 400, "router steps"), ("--emoji", 256, "embedded emoji"),
                                ("--resolution", 16, "image resolution fed to the latent space"),
                                ("--prompts-per-cluster", 4, "prompts per cluster (all-cluster set)"),
                                ("--pair-prompts", 12, "cluster-0 prompts (the DDPM/FM pair)"),
                                ("--images-per-prompt", 4, "seeds per prompt"), ("--fd-dims", 16, "FD projection width"),
                                ("--reference-images", 64, "real images per reference"),
                                ("--bootstrap", 1000, "bootstrap draws"), ("--seed", 0, "first seed")):
        study.add_argument(flag, type=int, default=default, help=f"{what} [default: %(default)s]")
    study.add_argument("--taus", type=float, nargs="+", default=None,
                       help="threshold sweep [default: 0.1 0.2 ... 0.9]")
    study.add_argument("--cfg-scale", type=float, default=1.5, help="guidance scale [default: %(default)s]")
    study.add_argument("--architecture", default=None, help="expert/router preset [default: tiny-16 or tiny by size]")
    study.add_argument("--latent-space", choices=["pixel", "sd-vae"], default="pixel",
                       help="latent space [default: %(default)s]")
    study.set_defaults(func=_study)

    up = sub.add_parser("up", help="start a local Prefect server on 127.0.0.1, pools, deployments and workers",
                        description="Start a Prefect server on 127.0.0.1, bootstrap pools/limits/automations, deploy "
                                    "prefect.yaml and start one CPU worker plus one GPU worker per visible GPU "
                                    "(infra/up.py). Processes are recorded under --home and stopped by `hddmp down`.")
    up.add_argument("--home", default=_default_home(), help="PREFECT_HOME, logs and pids [default: %(default)s]")
    up.add_argument("--port", type=int, default=4200, help="server port on 127.0.0.1 [default: %(default)s]")
    up.add_argument("--artifact-root", default=None, help="HDDM_ARTIFACT_ROOT for the workers [default: ./artifacts]")
    up.add_argument("--deploy", action="append", metavar="NAME", help="deploy only these (repeatable) [default: all]")
    up.add_argument("--no-gpu-workers", action="store_true", help="start the CPU worker only")
    up.set_defaults(func=_up)
    down = sub.add_parser("down", help="stop the local Prefect stack `hddmp up` started (by process id)")
    down.add_argument("--home", default=_default_home(), help="as given to `hddmp up` [default: %(default)s]")
    down.set_defaults(func=_down)
