"""Stop the local stack recorded by `python -m infra.up` (by pid: SIGINT, then SIGKILL)."""
from __future__ import annotations

import argparse
import os

from .local_stack import LocalStack
from .up import REPO


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.down")
    parser.add_argument("--home", default=os.path.join(REPO, ".hddm", "prefect"))
    args = parser.parse_args(argv)
    stack = LocalStack.load(os.path.abspath(args.home))
    stack.stop()
    print("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
