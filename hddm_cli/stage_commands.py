"""Stage subcommands: the same pydantic parameters as the flows; run in-process (hddm_core.pipeline.stages,
no Prefect server needed) or, with --prefect, submitted as a run of the matching deployment."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Callable, Optional

from .options import add_model_options, model_from_args
from .output import print_ref, progress_bar


@dataclass(frozen=True)
class StageCommand:
    stage: str  # hddm_core.pipeline.stages.STAGES key and deployment name
    params: str  # class name in hddm_core.pipeline.params
    help: str
    progress: Optional[str] = None  # progress bar label when the stage reports progress
    flow: Optional[str] = None  # Prefect flow/deployment name when it differs from the stage's (prefect.yaml)

    @property
    def deployment(self) -> str:
        name = self.flow or self.stage
        return f"{name}/{name}"


DATA = {
    "download": StageCommand("download", "DownloadParams", "download images + captions into webdataset shards "
                             "(img2dataset; the embedded default serves rendered emoji on 127.0.0.1)"),
    "recaption": StageCommand("recaption", "RecaptionParams", "recaption images (LLaVA) or keep the originals (passthrough)"),
    "embed": StageCommand("embed", "EmbedParams", "image embeddings (DINOv2, or the offline Inception-v3 FID network)"),
    "cluster": StageCommand("cluster", "ClusterParams", "hierarchical k-means of the embeddings into K clusters"),
    "prepare": StageCommand("prepare", "PrepareParams", "per-cluster training inputs: latents + text tokens",
                            flow="prepare-cluster-data"),
}
TRAIN_EXPERT = StageCommand("train-expert", "TrainExpertParams", "train one expert on one cluster, alone on one "
                            "device (resumes from its latest checkpoint)", progress="train expert")
TRAIN_ROUTER = StageCommand("train-router", "TrainRouterParams", "train the router p(cluster | x_t, t)",
                            progress="train router")
REGISTER = StageCommand("register-expert", "RegisterExpertParams", "validate an expert (schema, hash, shapes, finite, "
                        "smoke forward) and store it under the run's experts prefix")
EVALUATE = StageCommand("evaluate", "EvaluateParams", "sample every routing mode on the same seeds; metrics, "
                        "grids, plots and report.md", progress="evaluate (routing modes)")


def params_class(name: str):
    from hddm_core.pipeline import params

    return getattr(params, name)


def add_stage_parser(sub, name: str, cmd: StageCommand, *, extra: Callable[[argparse.ArgumentParser], None] | None = None,
                     **parser_kwargs):
    parser = sub.add_parser(name, help=cmd.help, description=cmd.help + ". Runs in this process without a Prefect "
                            "server; --prefect submits a run of the matching deployment instead.", **parser_kwargs)
    specs = add_model_options(parser, params_class(cmd.params))
    group = parser.add_argument_group("how to run")
    group.add_argument("--prefect", action="store_true",
                       help=f"submit a run of the {cmd.deployment!r} deployment to the Prefect API (PREFECT_API_URL; "
                            "`hddmp up` starts a local one) and wait for it")
    group.add_argument("--deployment", default=cmd.deployment,
                       help="'flow/deployment' used with --prefect [default: %(default)s]")
    group.add_argument("--no-wait", action="store_true", help="with --prefect: return once the run is scheduled")
    group.add_argument("--json", action="store_true", help="print the stage reference as JSON")
    if extra is not None:
        extra(parser)
    parser.set_defaults(func=run_stage_command, stage_cmd=cmd, specs=specs)
    return parser


def build_params(args: argparse.Namespace, **overrides):
    if args.stage_cmd.params == PIPELINE.params and not overrides:
        return pipeline_params(args)  # the preset's values fill only what the options leave unset
    return model_from_args(params_class(args.stage_cmd.params), args.specs, args, **overrides)


def run_stage(cmd: StageCommand, params):
    """Run in-process through hddm_core.pipeline.stages, with a progress bar where the stage reports progress."""
    from hddm_core.pipeline import stages
    from hddm_core.pipeline.preflight import check_environment

    check_environment(params)  # root, S3 credentials/endpoint, devices: one line each, before any work
    fn = stages.STAGES[cmd.stage]
    if cmd.progress is None:
        return fn(params)
    update, close = progress_bar(cmd.progress)
    try:
        return fn(params, progress=update)
    finally:
        close()


def submit_deployment(deployment: str, params, wait: bool = True):
    """run_deployment(deployment, parameters={'params': ...}); returns (flow_run, state name)."""
    if not os.environ.get("PREFECT_API_URL"):
        raise ValueError("--prefect needs a Prefect API: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) or "
                         "start a local stack with `hddmp up`")
    from prefect.deployments import run_deployment

    run = run_deployment(name=deployment, parameters={"params": params.model_dump(mode="json")},
                         timeout=None if wait else 0)
    state = run.state.name if run.state is not None else "unknown"
    return run, state


def run_stage_command(args: argparse.Namespace) -> int:
    params = build_params(args, **getattr(args, "param_overrides", {}))
    return execute(args, params)


def execute(args: argparse.Namespace, params) -> int:
    cmd: StageCommand = args.stage_cmd
    if args.prefect:
        run, state = submit_deployment(args.deployment, params, wait=not args.no_wait)
        print(f"{cmd.stage}: flow run {run.name} ({run.id}) {state}")
        return 0 if state in ("Completed", "Scheduled", "Pending", "Running") else 1
    ref = run_stage(cmd, params)
    print_ref(ref, as_json=args.json)
    return 0


# -- the whole pipeline -------------------------------------------------------------------------------
PIPELINE = StageCommand("pipeline", "PipelineParams", "run the whole pipeline (download -> ... -> evaluate) with "
                        "every parameter as an option; --preset demo|paper fills the defaults")


class _PresetHelp(argparse.Action):
    """-h/--help showing the values of the --preset given before it (`--preset paper --help`)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        preset = getattr(namespace, "p__preset", None)
        if preset:
            from hddm_core.pipeline.params import plain_pipeline_defaults
            from hddm_core.pipeline.presets import preset_values

            from .options import show_values

            show_values(parser, parser.get_default("specs"), preset_values(preset, plain_pipeline_defaults()))
            parser.description += f" Defaults shown: preset {preset!r}."
        parser.print_help()
        parser.exit()


def pipeline_params(args: argparse.Namespace):
    """PipelineParams from the options: the preset's values fill what the options leave unset."""
    from pydantic import ValidationError

    from hddm_core.pipeline.params import PipelineParams

    from .options import ParamsError, one_line_errors, values_from_args

    values = values_from_args(args.specs, args)
    try:
        if values.get("preset"):  # only the options left unset take the preset's values
            return PipelineParams.from_preset(values.pop("preset"), **values)
        return PipelineParams.model_validate(values)
    except ValidationError as exc:
        raise ParamsError(one_line_errors(exc, args.specs)) from None


def run_pipeline_command(args: argparse.Namespace) -> int:
    from hddm_core.pipeline.preflight import check_environment
    from hddm_core.pipeline.run import run_pipeline

    params = pipeline_params(args)
    if args.prefect:  # every value explicit: the server must not fill the preset again
        return execute(args, params.model_copy(update={"preset": None}))
    check_environment(params)
    result = run_pipeline(params, progress=progress_bar)
    if args.json:
        import json

        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"experts: {len(result['experts'])}; router: {result['router']}")
        print(f"report: {result['report']}")
    return 0


def add_pipeline_parser(sub) -> argparse.ArgumentParser:
    parser = add_stage_parser(sub, "pipeline", PIPELINE, add_help=False)
    parser.add_argument("-h", "--help", action=_PresetHelp,
                        help="show this help (after --preset NAME: with that preset's values as defaults) and exit")
    parser.set_defaults(func=run_pipeline_command)
    return parser
