"""A Dask cluster on this machine with the same layout as the GPU recipe in README.md (for tests and laptops).

    python -m hddm_infra.dask.local_cluster [--workers 1] [--gpu-resource]   # prints the scheduler address

Workers listen on 127.0.0.1 only. With --gpu-resource each worker advertises GPU=1, like the GPU hosts,
so tasks annotated with resources={"GPU": 1} are accepted.
"""
from __future__ import annotations

import argparse
import time


def local_cluster(n_workers: int = 1, gpu_resource: bool = False, processes: bool = False):
    """A distributed.LocalCluster on 127.0.0.1 (threads in this process unless processes=True)."""
    from distributed import LocalCluster

    return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=processes, protocol="tcp", host="127.0.0.1",
                        dashboard_address=None, resources={"GPU": 1} if gpu_resource else None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hddm_infra.dask.local_cluster")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--gpu-resource", action="store_true")
    args = parser.parse_args(argv)
    with local_cluster(args.workers, args.gpu_resource, processes=True) as cluster:
        print(cluster.scheduler_address, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
