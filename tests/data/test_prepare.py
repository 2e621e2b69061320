"""Per-cluster training inputs (pixel space + the real all-MiniLM-L6-v2; tiny SD-style VAE and CLIP
text model from configs) and the trainer's readers with resumable order."""
import numpy as np
import pytest
import torch
from safetensors.numpy import load

from hddm_core.data.cluster import ClusterConfig, cluster_stage, read_assignments
from hddm_core.data.cluster_data import ClusterDataset, RouterDataset, epoch_order, iter_batches, training_inputs_info
from hddm_core.data.embed import EmbedConfig, embed
from hddm_core.data.latents import SD_VAE_SCALE, PixelSpace, SDVaeLatents, images_to_tensor
from hddm_core.data.prepare import PrepareConfig, prepare_training_inputs
from hddm_core.data.text_encoders import ClipTextEncoder, MiniLMTextEncoder
from hddm_core.manifests import read_manifest
from hddm_core.storage import ArtifactStore
from tests.data.fixtures_b import GroupEmbedder, samples_hash, shape_samples, tiny_clip_text, tiny_vae


@pytest.fixture(scope="module")
def minilm():
    return MiniLMTextEncoder(device="cpu", max_length=32)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    store = ArtifactStore(str(tmp_path_factory.mktemp("prep") / "a"))
    samples = shape_samples(per_group=6)  # 18 samples
    embed(store, "emb", GroupEmbedder(), samples=samples, input_hash=samples_hash(samples),
          config=EmbedConfig(batch_size=8))
    cluster_stage(store, "clu", "emb", ClusterConfig(n_clusters=3, level_sizes=[6, 3], thumbnails_per_cluster=0))
    return store, samples


class _FailingText:
    def __init__(self, inner, fail_after):
        self.inner, self.calls, self.fail_after = inner, 0, fail_after
        self.width, self.max_length = inner.width, inner.max_length

    def describe(self):
        return self.inner.describe()

    def encode(self, texts):
        self.calls += 1
        if self.calls > self.fail_after:
            raise RuntimeError("killed")
        return self.inner.encode(texts)


@pytest.mark.slow  # over 10 s
def test_pixel_minilm_inputs_per_cluster_and_router(clustered, minilm):
    store, samples = clustered
    m = prepare_training_inputs(store, "prep", "clu", PixelSpace(16), minilm, samples=samples,
                                input_hash=samples_hash(samples), config=PrepareConfig(batch_size=4, shard_size=3))
    labels = read_assignments(store, "clu")
    info = training_inputs_info(store, "prep")
    assert info["latent"] == {"space": "pixel", "model": None, "scale": 1.0, "resolution": 16,
                              "latent_shape": [3, 16, 16], "has_std": False}
    assert info["text"]["width"] == 384 and info["text"]["max_length"] == 32
    assert sum(info["clusters"].values()) == len(samples) == m.counts["router"]
    by_key = {s.key: s for s in samples}
    seen = []
    for c in range(3):
        ds = ClusterDataset(store, "prep", c)
        assert len(ds) == info["clusters"][str(c)]
        for i in range(len(ds)):
            key = ds.key(i)
            seen.append(key)
            assert labels[key] == c
            latent, tokens, mask = ds[i]
            assert latent.shape == (3, 16, 16) and tokens.shape == (32, 384) and mask.shape == (32,)
            expect = images_to_tensor([by_key[key].image], 16)[0]
            torch.testing.assert_close(latent, expect, atol=1e-3, rtol=0)
            ref_tokens, ref_mask = minilm.encode([by_key[key].caption])
            n = int(ref_mask.sum())
            assert int(mask.sum()) == n and bool(mask[:n].all()) and not tokens[n:].any()
            torch.testing.assert_close(tokens[:n], ref_tokens[0, :n], atol=2e-2, rtol=1e-2)
    assert sorted(seen) == sorted(by_key)  # every sample exactly once over the clusters
    router = RouterDataset(store, "prep")
    assert len(router) == len(samples)
    for i in range(len(router)):
        latent, label = router[i]
        assert int(label) == labels[router.key(i)] and latent.shape == (3, 16, 16)
    null_tokens, null_mask = ClusterDataset(store, "prep", 0).null_text()
    assert int(null_mask.sum()) == 2  # [CLS] [SEP] of the empty caption


@pytest.mark.slow  # over 10 s
def test_killed_prepare_resumes_to_identical_shards(clustered, minilm):
    store, samples = clustered
    h, cfg = samples_hash(samples), PrepareConfig(batch_size=2, shard_size=2)
    with pytest.raises(RuntimeError, match="killed"):
        prepare_training_inputs(store, "p2", "clu", PixelSpace(8), _FailingText(minilm, 5), samples=samples,
                                input_hash=h, config=cfg)
    assert read_manifest(store, "p2") is None
    resumed = prepare_training_inputs(store, "p2", "clu", PixelSpace(8), minilm, samples=samples, input_hash=h,
                                      config=cfg)
    assert resumed.counts["resumed_samples"] > 0
    fresh = prepare_training_inputs(store, "p3", "clu", PixelSpace(8), minilm, samples=samples, input_hash=h,
                                    config=cfg)
    names = sorted(k for k in fresh.outputs if k.endswith(".safetensors"))
    assert sorted(k for k in resumed.outputs if k.endswith(".safetensors")) == names
    for name in names:  # same samples in the same shards; text numerics may differ with batch shape
        if "/" in name:
            marker = name.replace(".safetensors", ".done.json")
            assert store.read_json(f"p2/{marker}")["keys"] == store.read_json(f"p3/{marker}")["keys"]
        a, b = load(store.read_bytes(f"p2/{name}")), load(store.read_bytes(f"p3/{name}"))
        assert sorted(a) == sorted(b)
        for field in a:
            np.testing.assert_allclose(a[field].astype(np.float32), b[field].astype(np.float32), atol=5e-3, rtol=5e-3)


def test_sd_vae_and_clip_text_paths(clustered):
    store, samples = clustered
    vae = tiny_vae()
    model, tokenizer = tiny_clip_text()
    latents = SDVaeLatents(vae, source="tiny-random-vae (test)", resolution=16, device="cpu")
    text = ClipTextEncoder(model, tokenizer, source="tiny-random-clip-text (test)", device="cpu")
    prepare_training_inputs(store, "vae", "clu", latents, text, samples=samples, input_hash=samples_hash(samples),
                            config=PrepareConfig(batch_size=8, shard_size=8))
    info = training_inputs_info(store, "vae")
    assert info["latent"]["scale"] == SD_VAE_SCALE and info["latent"]["latent_shape"] == [4, 8, 8]
    assert info["text"] == {"encoder": "tiny-random-clip-text (test)", "width": 16, "max_length": 77,
                            "output": "last_hidden_state"}
    ds = ClusterDataset(store, "vae", 0)
    key = ds.key(0)
    latent, tokens, mask = ds[0]
    image = next(s.image for s in samples if s.key == key)
    with torch.no_grad():
        post = vae.encode(images_to_tensor([image], 16)).latent_dist
    torch.testing.assert_close(latent, post.mean[0] * SD_VAE_SCALE, atol=2e-3, rtol=2e-3)
    shard = ds.locate(0)[0]
    np.testing.assert_allclose(shard["latent_std"][0], (post.std[0] * SD_VAE_SCALE).numpy(), atol=2e-3, rtol=2e-3)
    assert tokens.shape == (77, 16) and mask.sum() == len(tokenizer(next(s.caption for s in samples
                                                                           if s.key == key))["input_ids"])


def test_order_is_a_function_of_seed_and_epoch_and_resumes_exactly(clustered, minilm):
    store, samples = clustered
    prepare_training_inputs(store, "prep", "clu", PixelSpace(16), minilm, samples=samples,
                            input_hash=samples_hash(samples), config=PrepareConfig(batch_size=4, shard_size=3))
    sizes = [3, 3, 2]
    o = epoch_order(sizes, seed=1, epoch=0)
    assert sorted(o.tolist()) == list(range(8))
    np.testing.assert_array_equal(o, epoch_order(sizes, 1, 0))
    assert not np.array_equal(o, epoch_order(sizes, 1, 1))
    router = RouterDataset(store, "prep")
    full = [(e, p, b) for e, p, b in iter_batches(router, 4, seed=7, epochs=3)]
    stop = 5  # a trainer stopped after 5 batches, saving (epoch, position) of the last one
    epoch, position = full[stop - 1][0], full[stop - 1][1]
    resumed = list(iter_batches(router, 4, seed=7, start_epoch=epoch, start_position=position,
                                epochs=3 - epoch))
    assert len(resumed) == len(full) - stop
    for (_, _, a), (_, _, b) in zip(full[stop:], resumed):
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])
    with pytest.raises(ValueError, match="no shards"):
        ClusterDataset(store, "prep", 7)
