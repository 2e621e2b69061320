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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hddmp", description="Heterogeneous Decentralized Diffusion Models pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job on the embedded default (CPU)")
    demo.add_argument("--out", default="artifacts/demo", help="output folder (default: %(default)s)")
    demo.set_defaults(func=_demo)
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
