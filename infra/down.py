"""Stop the local stack recorded by `python -m hddm_infra.up` (by pid: SIGINT, then SIGKILL)."""
from __future__ import annotations

import argparse
import os

from .local_stack import LocalStack


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hddm_infra.down")
    parser.add_argument("--home", default=os.path.join(".hddm", "prefect"))
    args = parser.parse_args(argv)
    stack = LocalStack.load(os.path.abspath(args.home))
    stack.stop()
    print("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
