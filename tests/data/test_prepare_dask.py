"""The prepare stage as work units (compute units, then a join per output shard): in-process and on a
real Dask cluster of 2 worker processes on 127.0.0.1, compared byte for byte with the single-process
stage (hddm_core.data.prepare.prepare_training_inputs), also with a worker killed mid-stage."""
from __future__ import annotations

import os
import signal
import time

import pytest

from hddm_core.data.cluster import ClusterConfig, cluster_stage
from hddm_core.data.coordinator import DaskExecutor, InProcess
from hddm_core.data.embed import EmbedConfig, embed
from hddm_core.data.latents import PixelSpace
from hddm_core.data.prepare import PrepareConfig, prepare_training_inputs
from hddm_core.data.prepare_join import join_plan, prepare_units
from hddm_core.data.prepare_units import PIECES, encoders_spec, plan_prepare_units
from hddm_core.data.text_encoders import ClipTextEncoder
from hddm_core.data.units import ListSource
from hddm_core.storage import ArtifactStore
from tests.data.fixtures_b import GroupEmbedder, samples_hash, shape_samples, tiny_clip_text

CONFIG = PrepareConfig(batch_size=2, shard_size=3)  # the batch does not divide the shard: still the same bytes
HELD = PrepareConfig(batch_size=2, shard_size=3, holdout_per_cluster=2, holdout_max_fraction=0.4, holdout_seed=5)


# -- model factories the workers import by name ------------------------------------------------------
def tiny_text():
    model, tokenizer = tiny_clip_text()
    return ClipTextEncoder(model, tokenizer, source="tiny-clip-text (test)", max_length=32, device="cpu")


class SlowPixels(PixelSpace):
    """Pixel space that sleeps per batch (to kill a worker mid-stage) or refuses narrow images (ValueError)."""

    def __init__(self, resolution: int = 16, delay_s: float = 0.0, refuse_width: int = 0):
        super().__init__(resolution)
        self.delay_s, self.refuse_width = delay_s, refuse_width

    def encode(self, images):
        if any(im.width < self.refuse_width for im in images):
            raise ValueError(f"image narrower than {self.refuse_width} px")
        time.sleep(self.delay_s)
        return super().encode(images)


def spec(**kwargs):
    return encoders_spec(f"{__name__}:SlowPixels", {"resolution": 16, **kwargs}, f"{__name__}:tiny_text", {})


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A cluster stage over 18 samples; the prepare input adds 2 samples it never clustered."""
    import torch

    torch.set_num_threads(1)  # the workers run one thread each
    store = ArtifactStore(str(tmp_path_factory.mktemp("prep")))
    clustered = shape_samples(per_group=6)
    embed(store, "emb", GroupEmbedder(), samples=clustered, input_hash=samples_hash(clustered),
          config=EmbedConfig(batch_size=8))
    cluster_stage(store, "clu", "emb", ClusterConfig(n_clusters=3, level_sizes=[6, 3], thumbnails_per_cluster=0))
    extra = [s for s in shape_samples(per_group=7) if s.key.endswith("0006")][:2]
    items = clustered[:7] + extra[:1] + clustered[7:] + extra[1:]
    ref = prepare_training_inputs(store, "ref", "clu", PixelSpace(16), tiny_text(), samples=items,
                                  input_hash=samples_hash(items), config=CONFIG)
    prepare_training_inputs(store, "ref_held", "clu", PixelSpace(16), tiny_text(), samples=items,
                            input_hash=samples_hash(items), config=HELD)
    return store, items, ref


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      worker_dashboard_address=None) as c, Client(c) as client:
        yield client


def source(items):
    return ListSource(items, samples_hash(items))


def assert_same_output(store, prefix, manifest, ref, ref_prefix="ref"):
    assert manifest.config == ref.config and manifest.inputs == ref.inputs
    assert sorted(manifest.outputs) == sorted(ref.outputs)
    for key in ref.outputs:  # every shard, marker and the null caption, byte for byte
        assert store.read_bytes(f"{prefix}/{key}") == store.read_bytes(f"{ref_prefix}/{key}"), key
    assert manifest.content_hash == ref.content_hash
    for name in ("samples", "unclustered", "caption_fallback", "router", "clusters", "streams", "holdout",
                 "holdout_total"):
        assert manifest.counts.get(name) == ref.counts.get(name), name
    assert not store.exists(f"{prefix}/{PIECES}")  # the pieces are gone once the manifest is written


# -- tests --------------------------------------------------------------------------------------------
def test_join_plan_splits_each_stream_at_its_own_shard_boundaries():
    records = [{"unit": 0, "streams": {"cluster_000": 3, "router": 4}},
               {"unit": 1, "streams": {"cluster_000": 2, "cluster_001": 2, "router": 4}}]
    plan = join_plan(records, shard_size=3)
    assert plan == [("cluster_000", 0, [(0, 0, 3)]), ("cluster_000", 1, [(1, 0, 2)]),
                    ("cluster_001", 0, [(1, 0, 2)]),
                    ("router", 0, [(0, 0, 3)]), ("router", 1, [(0, 3, 4), (1, 0, 2)]), ("router", 2, [(1, 2, 4)])]


def test_units_cover_the_routed_samples_in_whole_batches():
    keys = ["a", "x", "b", "c", "d", "e"]
    units, unclustered = plan_prepare_units(keys, {"a": 0, "b": 1, "c": 0, "d": 2, "e": 1}, {"b": "new b"}, 2, 4)
    assert unclustered == 1
    assert [(u.start, u.stop, u.positions, u.keys) for u in units] == [(0, 4, (0, 2, 3, 4), ("a", "b", "c", "d")),
                                                                       (4, 5, (5,), ("e",))]
    assert units[0].labels == (0, 1, 0, 2) and units[0].captions == (None, "new b", None, None)
    with pytest.raises(ValueError, match="unit_size must be a positive multiple of batch_size=2, got 3"):
        plan_prepare_units(keys, {}, {}, 2, 3)


@pytest.mark.parametrize("unit_size", [2, 6])
def test_in_process_units_equal_the_single_process_stage(world, unit_size):
    store, items, ref = world
    prefix = f"units{unit_size}"
    manifest = prepare_units(store, prefix, "clu", spec(), source(items), config=CONFIG, unit_size=unit_size,
                             executor=InProcess(), torch_threads=1)
    assert_same_output(store, prefix, manifest, ref)
    assert manifest.counts["unclustered"] == 2 and manifest.counts["failures"] == {}
    again = prepare_units(store, prefix, "clu", spec(), source(items), config=CONFIG, executor=InProcess())
    assert again.content_hash == manifest.content_hash  # finished: skipped


@pytest.mark.parametrize("unit_size", [2, 4])
def test_units_with_a_held_out_split_equal_the_single_process_stage(world, unit_size):
    from hddm_core.manifests import read_manifest

    store, items, _ = world
    ref = read_manifest(store, "ref_held")
    assert ref.counts["holdout_total"] == 6 and sorted(k for k in ref.counts["streams"] if k.startswith("holdout_"))
    manifest = prepare_units(store, f"held{unit_size}", "clu", spec(), source(items), config=HELD,
                             unit_size=unit_size, executor=InProcess(), torch_threads=1)
    assert_same_output(store, f"held{unit_size}", manifest, ref, "ref_held")
    assert manifest.config["holdout"]["seed"] == 5


def test_a_bad_sample_is_counted_and_the_stage_goes_on(world):
    from PIL import Image

    from hddm_core.data.shards import Sample

    store, items, _ = world
    tiny = Sample(key=items[3].key, image=Image.new("RGB", (4, 4)), caption="too small")  # a clustered key
    bad = items[:3] + [tiny] + items[4:]
    manifest = prepare_units(store, "bad", "clu", spec(refuse_width=8), source(bad), config=CONFIG,
                             executor=InProcess(), torch_threads=1)
    assert manifest.counts["failures"] == {"compute: ValueError": 1}
    assert manifest.counts["router"] == 18 - 1 and sum(manifest.counts["clusters"].values()) == 17


@pytest.mark.slow  # ~40 s here: two worker processes import torch and transformers
def test_two_dask_workers_share_the_units_and_write_the_single_process_bytes(world, cluster):
    store, items, ref = world
    manifest = prepare_units(store, "dask", "clu", spec(delay_s=0.2), source(items), config=CONFIG, unit_size=2,
                             executor=DaskExecutor(cluster, timeout_s=180), torch_threads=1)
    assert len({u["worker"] for u in manifest.counts["units"]}) == 2 == len(manifest.counts["workers"])
    assert_same_output(store, "dask", manifest, ref)


@pytest.mark.slow
def test_a_worker_killed_mid_stage_loses_and_duplicates_nothing(world, cluster):
    from concurrent.futures import ThreadPoolExecutor

    store, items, ref = world
    run = ThreadPoolExecutor(1).submit(
        prepare_units, store, "killed", "clu", spec(delay_s=1.0), source(items), config=CONFIG, unit_size=2,
        executor=DaskExecutor(cluster, timeout_s=240), torch_threads=1)
    deadline, busy = time.monotonic() + 90, []
    while time.monotonic() < deadline and not busy:  # a unit running on a worker: SIGKILL that worker
        busy = [w for w, tasks in cluster.processing().items() if any("prepare-unit" in str(t) for t in tasks)]
        time.sleep(0.1)
    assert busy, "no unit started"
    time.sleep(0.5)
    pid = cluster.run(os.getpid, workers=[busy[0]])[busy[0]]
    os.kill(pid, signal.SIGKILL)
    manifest = run.result(timeout=300)
    assert_same_output(store, "killed", manifest, ref)  # complete; markers name each key once


def test_prepare_parameters_name_the_encoders_the_workers_build():
    from hddm_core.data.map_stages import prepare_spec
    from hddm_core.pipeline.params import PrepareParams

    params = PrepareParams(latent_space="sd-vae", resolution=64, text_encoder="clip", max_length=20, workers=4)
    model = prepare_spec(params, "cuda")
    assert model.kwargs == {
        "latent": {"factory": "hddm_core.data.factories:build_latent_space",
                   "kwargs": {"description": {"space": "sd-vae", "resolution": 64, "model": "stabilityai/sd-vae-ft-mse"},
                              "device": "cuda"}},
        "text": {"factory": "hddm_core.data.factories:build_text_encoder",
                 "kwargs": {"description": {"encoder": "openai/clip-vit-large-patch14", "max_length": 20},
                            "device": "cuda"}}}
    pixel = prepare_spec(PrepareParams(), "cpu").kwargs
    assert pixel["latent"]["kwargs"]["description"] == {"space": "pixel", "resolution": 16,
                                                        "model": PrepareParams().vae_model}
    # the single-process stage builds from the same descriptions
    from hddm_core.data.factories import latent_description, text_description

    assert pixel["latent"]["kwargs"]["description"] == latent_description(PrepareParams())
    assert pixel["text"]["kwargs"]["description"] == text_description(PrepareParams())
