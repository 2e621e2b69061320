"""Hierarchical k-means seconds vs bare faiss doing the same levels on the same matrix (ratio, printed).

Run: python benchmarks/bench_kmeans.py [N] [D]
"""
import sys
import time

import faiss
import numpy as np

from hddm_core.data.cluster import auto_level_sizes, hierarchical_kmeans, normalize_rows


def bare(x, sizes, seed=0, n_iter=25):
    x = normalize_rows(x)
    items, weights = x, None
    for level, k in enumerate(sizes):
        km = faiss.Kmeans(x.shape[1], k, niter=n_iter, seed=seed + level, min_points_per_centroid=1,
                          max_points_per_centroid=1 << 30)
        km.train(items, weights=weights)
        _, a = km.index.search(items, 1)
        weights = np.bincount(a[:, 0], weights=weights, minlength=k).astype(np.float32) + 1e-6
        items = km.centroids
    return items


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    d = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    sizes = auto_level_sizes(n, 8)
    times = {"ours": [], "bare": []}
    for _ in range(3):  # interleaved so neighbours on the machine load both alike
        t = time.perf_counter(); bare(x, sizes); times["bare"].append(time.perf_counter() - t)
        t = time.perf_counter(); hierarchical_kmeans(x, 8, sizes, n_redo_upper=1); times["ours"].append(time.perf_counter() - t)
    ours, ref = min(times["ours"]), min(times["bare"])
    print(f"N={n} D={d} levels={sizes}: hierarchical_kmeans {ours:.3f} s, bare faiss {ref:.3f} s, "
          f"speed ratio bare/ours = {ref / ours:.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
