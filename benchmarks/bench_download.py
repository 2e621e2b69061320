"""Download throughput with the fetch guards vs plain img2dataset on the same loopback source.

Images/s = successes / summed per-shard download time (img2dataset's own shard stats), which leaves
out process start-up; runs are interleaved (guarded, plain, guarded, plain...). Printed, not asserted;
goal: ratio >= 0.9.   python benchmarks/bench_download.py [--images 1000] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main():
    from hddm_core.data.download import DownloadConfig, read_summary, run_download
    from hddm_core.data.embedded import EmbeddedConfig, build_embedded_dataset, write_laion_parquet
    from hddm_core.data.loopback_server import LoopbackImageServer
    from hddm_core.storage import ArtifactStore

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hddm-bench-dl-") as tmp:
        store = ArtifactStore(tmp)
        build_embedded_dataset(store, "emb", EmbeddedConfig(size=64, limit=args.images))
        rates = {"guarded": [], "plain": []}
        with LoopbackImageServer(store, "emb/images") as server:
            key = write_laion_parquet(store, "emb", server.base_url)
            for rep in range(args.repeats):
                for mode in ("guarded", "plain"):
                    cfg = DownloadConfig(guards=mode == "guarded", allow_hosts=(server.host_port,),
                                         number_sample_per_shard=max(1, args.images // 4),
                                         thread_count=args.threads)
                    run_download(store, key, f"dl-{mode}", cfg, force=True)
                    s = read_summary(store, f"dl-{mode}")
                    seconds = sum(p["duration"] for p in s["per_shard"].values())
                    rates[mode].append(s["success"] / seconds)
                    print(f"rep {rep} {mode:8s} {s['success']}/{s['count']} ok  {rates[mode][-1]:8.1f} images/s")
    g, p = statistics.median(rates["guarded"]), statistics.median(rates["plain"])
    print(f"guarded {g:.1f} images/s, plain img2dataset {p:.1f} images/s, ratio {g / p:.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
