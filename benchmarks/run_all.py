"""`make bench`: every CPU benchmark at its default size, one after another, each in its own process
(so one's threads and caches do not colour the next). Figures are printed, never asserted.
The GPU check (benchmarks.gpu_check_training) is left out: run it on a GPU machine."""
from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ["bench_dit", "bench_training", "bench_ensemble", "bench_embed", "bench_kmeans", "bench_download"]


def main(argv: list[str] | None = None) -> int:
    chosen = (argv if argv is not None else sys.argv[1:]) or BENCHMARKS
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; valid: {BENCHMARKS}", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}"]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
