"""`hddmp`: the project's command line."""
from __future__ import annotations

import argparse
import logging
import os
import sys


def _demo(args: argparse.Namespace) -> int:
    from hddm_core.demo_gaussian import run_gaussian_demo

    out = os.path.abspath(args.out)
    results = run_gaussian_demo(out)
    target = results.pop("target")
    print(f"target N({target['mean']}, {target['std']}^2), {target['steps']} Euler steps, {target['samples']} draws")
    for name, r in results.items():
        print(f"  {name:32s} mean {r['mean']:+.4f}  std {r['std']:.4f}")
    print(f"wrote {os.path.join(out, 'gaussian_demo.json')} and gaussian_demo.png")
    return 0


def _expert_inspect(args: argparse.Namespace) -> int:
    from hddm_core.experts import inspect_checkpoint

    report = inspect_checkpoint(args.path)
    print(report)
    return 0 if report.endswith("verdict: OK") else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hddmp", description="Heterogeneous Decentralized Diffusion Models pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job on the embedded default (CPU)")
    demo.add_argument("--out", default="artifacts/demo", help="output folder (default: %(default)s)")
    demo.set_defaults(func=_demo)
    expert = sub.add_parser("expert", help="expert and router checkpoints")
    expert_sub = expert.add_subparsers(dest="expert_command", required=True)
    inspect = expert_sub.add_parser("inspect", help="print a checkpoint's manifest and validation checks "
                                                    "(exit 1 when a check fails); never unpickles")
    inspect.add_argument("path", help="checkpoint folder, its expert.json/router.json, or a URL (s3://...)")
    inspect.set_defaults(func=_expert_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"hddmp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
