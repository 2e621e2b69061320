"""Commands that are not pipeline stages: sampling an ensemble, the paper-comparison study, and the
local Prefect stack (`up` / `down`)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

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
    routing: Literal["auto", "top-1", "top-2", "full", "threshold", "single"] = Field(
        "auto", description="auto: top-2 with a router, else threshold (FM first) when DDPM and FM experts are "
                            "present, else a uniform mix.")
    tau: float = Field(0.3, ge=0, le=1, description="Threshold router switch time.")
    images_per_prompt: int = Field(4, ge=1, le=64)
    steps: int = Field(20, ge=1, le=1000, description="Euler steps.")
    cfg_scale: float = Field(1.5, ge=0, le=50, description="Classifier-free guidance scale.")
    seed: int = Field(0, ge=0)
    prepare_prefix: str = Field("prepare", description="The run's prepare stage (its text encoder settings).")
    out: str = Field("samples.png", description="Output PNG path.")


def _sample(args) -> int:
    import torch

    from hddm_core.data.factories import build_text_encoder
    from hddm_core.data.cluster_data import training_inputs_info
    from hddm_core.pipeline.evaluation import _expert_folders, _routings
    from hddm_core.inference.ensemble_sampler import sample_ensemble
    from hddm_core.inference.loading import load_ensemble
    from hddm_core.pipeline.report import image_grid
    from hddm_core.storage import open_store

    p: SampleParams = model_from_args(SampleParams, args.specs, args)
    store = open_store(p.artifact_root)
    ens = load_ensemble(_expert_folders(store, p), p.router)
    space = ens.members[0].manifest.get("latent_space")
    if space != "pixel":
        raise ValueError(f"hddmp sample writes pixel-space experts only; these experts use latent_space {space!r} "
                         "(use `hddmp evaluate`, whose report decodes nothing either, or decode with the run's VAE)")
    info = training_inputs_info(store, p.prepare_prefix)
    encoder = build_text_encoder(info["text"], device="cpu", check_recorded=True)
    prompts = [c for c in p.prompts for _ in range(p.images_per_prompt)]
    tokens, mask = encoder.encode(prompts)
    cfg = ens.members[0].manifest["config"]
    shape = (int(cfg["in_channels"]), int(cfg["input_size"]), int(cfg["input_size"]))
    mode = p.routing
    if mode == "auto":
        kinds = {m.declaration.prediction == "velocity" for m in ens.members}
        mode = "top-2" if ens.router is not None and len(ens.members) > 1 else (
            "threshold" if kinds == {True, False} else "single")
    routings, skipped = _routings([mode], ens.members, ens.router is not None, p.tau)
    if not routings:
        raise ValueError(f"routing {mode!r} does not apply here: {skipped[0]}")
    name, routing = routings[0]
    res = sample_ensemble(ens.members, list(range(p.seed, p.seed + len(prompts))), shape, router=ens.router,
                          routing=routing, cond={"tokens": tokens, "mask": mask}, cfg_scale=p.cfg_scale, steps=p.steps,
                          router_time_input=ens.router_time_input, progress=True)
    png = image_grid(res.samples.clamp(-1, 1), prompts, columns=p.images_per_prompt)
    os.makedirs(os.path.dirname(os.path.abspath(p.out)), exist_ok=True)
    with open(p.out, "wb") as f:
        f.write(png)
    print(f"sampled {len(prompts)} images with {len(ens.members)} experts ({name}, {p.steps} steps) -> {p.out}")
    return 0


def _study(args) -> int:
    from hddm_core.pipeline.report import write_report
    from hddm_core.pipeline.study import gaussian_study_inputs, print_table, run_study

    if args.seeds < 16 or args.steps < 1:
        raise ValueError(f"--seeds must be >= 16 and --steps >= 1, got {args.seeds} and {args.steps}")
    results = run_study(gaussian_study_inputs(), range(args.seeds), steps=args.steps, progress=True)
    print_table(results)
    print(f"report: {write_report(args.out, results)}")
    return 0


# -- the local Prefect stack ---------------------------------------------------------------------------------
def _repo() -> str:
    """The repository root (infra/, flows/, prefect.yaml): the current folder or this checkout's."""
    for root in (os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
        if os.path.isfile(os.path.join(root, "infra", "up.py")) and os.path.isfile(os.path.join(root, "prefect.yaml")):
            if root not in sys.path:
                sys.path.insert(0, root)
            return root
    raise FileNotFoundError("`hddmp up`/`down` need the repository (infra/up.py and prefect.yaml); run them from "
                            "the repository root")


def _default_home() -> str:
    return os.environ.get("HDDM_PREFECT_HOME") or os.path.join(".hddm", "prefect")


def _up(args) -> int:
    _repo()
    up = importlib.import_module("infra.up").up
    stack = up(os.path.abspath(args.home), args.port, args.artifact_root, args.deploy or None,
               gpu_workers=not args.no_gpu_workers)
    print(f"Prefect UI: http://127.0.0.1:{stack.port}   (API {stack.api_url})")
    print(f"server pid {stack.server_pid}, worker pids {stack.worker_pids}")
    print(f"use it from this shell: export PREFECT_API_URL={stack.api_url}")
    print(f"stop it: hddmp down --home {args.home}")
    return 0


def _down(args) -> int:
    _repo()
    LocalStack = importlib.import_module("infra.local_stack").LocalStack
    LocalStack.load(os.path.abspath(args.home)).stop()
    print(f"stopped the local Prefect stack recorded in {args.home}")
    return 0


def add_local_parsers(sub) -> None:
    sample = sub.add_parser("sample", help="sample an ensemble of experts for your prompts (a captioned PNG grid)",
                            description=SampleParams.__doc__)
    sample.set_defaults(func=_sample, specs=add_model_options(sample, SampleParams))

    study = sub.add_parser("study", help="the paper's comparisons (heterogeneous vs homogeneous, routing modes, "
                                         "threshold sweep) on a Gaussian mixture with exact experts")
    study.add_argument("--out", default="artifacts/study", help="report folder [default: %(default)s]")
    study.add_argument("--seeds", type=int, default=512, help="samples per variant [default: %(default)s]")
    study.add_argument("--steps", type=int, default=50, help="Euler steps [default: %(default)s]")
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
