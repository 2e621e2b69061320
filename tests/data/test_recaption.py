"""Recaption stage. The LLaVA tests drive the real transformers LLaVA code path (processor, image
token expansion, batched left-padded greedy generation, decoding) with a tiny RANDOMLY INITIALISED
model built from a config: they test plumbing, batching, parsing and writing, not caption quality,
and the stage marks such output unusable as captions."""
import pytest

from hddm_core.data.recaption import (LlavaCaptioner, PassthroughCaptioner, RecaptionConfig, clean_generated,
                                      read_captions, read_captions_table, recaption)
from hddm_core.manifests import read_manifest
from hddm_core.storage import ArtifactStore
from tests.data.fixtures_b import samples_hash, shape_samples, tiny_llava


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(str(tmp_path / "artifacts"))


def test_passthrough_keeps_captions_keyed_and_skips_a_finished_rerun(store):
    samples = shape_samples(per_group=3)
    h = samples_hash(samples)
    m1 = recaption(store, "recaption", PassthroughCaptioner(), samples=samples, input_hash=h,
                   config=RecaptionConfig(batch_size=4, shard_size=5))
    table = read_captions_table(store, "recaption").to_pylist()
    assert [r["key"] for r in table] == [s.key for s in samples]
    assert all(r["caption"] == r["original_caption"] == s.caption for r, s in zip(table, samples))
    assert m1.counts["streams"] == {"captions": 9} and len([k for k in m1.outputs if k.endswith(".parquet")]) == 2
    m2 = recaption(store, "recaption", PassthroughCaptioner(), samples=samples, input_hash=h,
                   config=RecaptionConfig(batch_size=4, shard_size=5))
    assert m2.created_at == m1.created_at  # skipped: same config and inputs
    m3 = recaption(store, "recaption", PassthroughCaptioner(), samples=samples, input_hash=h,
                   config=RecaptionConfig(batch_size=4, shard_size=5), force=True)
    assert m3.created_at != m1.created_at and m3.counts["resumed_samples"] == 0


def test_iterable_input_needs_a_hash_and_bad_config_is_refused(store):
    with pytest.raises(ValueError, match="input_hash"):
        recaption(store, "r", PassthroughCaptioner(), samples=shape_samples(1))
    with pytest.raises(ValueError, match="batch_size"):
        recaption(store, "r", PassthroughCaptioner(), samples=[], input_hash="x", config=RecaptionConfig(batch_size=0))
    with pytest.raises(ValueError, match="exactly one"):
        recaption(store, "r", PassthroughCaptioner())


class _Crashing(PassthroughCaptioner):
    def __init__(self, fail_after_calls):
        self.calls, self.fail_after = 0, fail_after_calls

    def caption(self, images, originals):
        self.calls += 1
        if self.calls > self.fail_after:
            raise RuntimeError("killed")
        return [o.upper() for o in originals]


def test_killed_run_resumes_without_duplicating_or_losing_samples(store):
    samples = shape_samples(per_group=4)  # 12 samples, shards of 4, batches of 2
    cfg, h = RecaptionConfig(batch_size=2, shard_size=4), samples_hash(samples)
    with pytest.raises(RuntimeError, match="killed"):
        recaption(store, "r", _Crashing(fail_after_calls=3), samples=samples, input_hash=h, config=cfg)
    assert read_manifest(store, "r") is None  # no manifest for a killed run
    second = _Crashing(fail_after_calls=99)
    m = recaption(store, "r", second, samples=samples, input_hash=h, config=cfg)
    assert m.counts["resumed_samples"] == 4 and second.calls == 4  # shard 0 kept, 8 samples left in 4 batches
    table = read_captions_table(store, "r").to_pylist()
    assert [r["key"] for r in table] == [s.key for s in samples]
    assert [r["caption"] for r in table] == [s.caption.upper() for s in samples]


def test_clean_generated_takes_first_line_without_quotes():
    assert clean_generated('  "A red dog."\nUSER: more') == "A red dog."
    assert clean_generated("\n") == ""


def test_tiny_random_llava_batches_like_single_images_and_is_marked_unusable(store):
    model, processor = tiny_llava()
    captioner = LlavaCaptioner(model, processor, source="tiny-random-llava (test)", pretrained=False,
                               max_new_tokens=6)
    samples = shape_samples(per_group=2)
    batched = captioner.caption([s.image for s in samples], [s.caption for s in samples])
    single = [captioner.caption([s.image], [s.caption])[0] for s in samples]
    assert batched == single  # left padding: a row's generation does not depend on its batch mates
    assert any(batched) and all(isinstance(c, str) and "<image>" not in c and "ASSISTANT" not in c for c in batched)
    m = recaption(store, "llava", captioner, samples=samples, input_hash=samples_hash(samples),
                  config=RecaptionConfig(batch_size=4, shard_size=4))
    assert m.config["captioner"]["captions_usable"] is False and m.counts["captions_usable"] is False
    with pytest.raises(ValueError, match="not captions"):
        read_captions(store, "llava")
    got = read_captions(store, "llava", allow_unusable=True)
    assert [got[s.key] for s in samples] == batched


def test_llava_template_is_validated():
    model, processor = tiny_llava()
    with pytest.raises(ValueError, match="<image>"):
        LlavaCaptioner(model, processor, source="t", pretrained=False, template="USER: {prompt}")
