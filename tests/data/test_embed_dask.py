"""The embed stage as a map over work units: in-process, on a local process pool and on a real Dask
cluster of 2 worker processes on 127.0.0.1. Outputs are compared byte for byte with the
single-process stage (hddm_core.data.embed.embed)."""
from __future__ import annotations

import os
import signal
import time

import pytest

from hddm_core.data.coordinator import DaskExecutor, InProcess, ProcessPool, UnitFailed
from hddm_core.data.embed import Dinov2Embedder, EmbedConfig, embed, embed_units, read_embeddings
from hddm_core.data.unit_runner import ModelSpec
from hddm_core.data.units import ListSource, plan_units
from hddm_core.manifests import read_manifest
from hddm_core.storage import ArtifactStore
from tests.data.fixtures_b import samples_hash, shape_samples, tiny_dinov2

CONFIG = EmbedConfig(batch_size=2, shard_size=4)  # batch divides shard: the single-process batches


# -- model factories the workers import by name ------------------------------------------------------
def tiny_embedder(delay_s: float = 0.0, refuse_width: int = 0):
    model, processor = tiny_dinov2()
    embedder = Dinov2Embedder(model, processor, source="tiny-random-dinov2 (test)", device="cpu")
    if delay_s or refuse_width:
        return _Wrapped(embedder, delay_s, refuse_width)
    return embedder


class _Wrapped:
    """The tiny embedder, slowed down (to kill a worker mid-stage) or refusing small images (a bad
    sample: ValueError)."""

    def __init__(self, inner, delay_s, refuse_width):
        self.inner, self.delay_s, self.refuse_width = inner, delay_s, refuse_width
        self.dim = inner.dim

    def describe(self):
        return self.inner.describe()

    def preprocess(self, images):
        if any(im.width < self.refuse_width for im in images):
            raise ValueError(f"image narrower than {self.refuse_width} px")
        time.sleep(self.delay_s)
        return self.inner.preprocess(images)

    def forward(self, pixels):
        return self.inner.forward(pixels)


def spec(**kwargs) -> ModelSpec:
    return ModelSpec(f"{__name__}:tiny_embedder", kwargs)


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def samples():
    return shape_samples(per_group=6)  # 18 samples: 5 shards of 4 (the last holds 2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, samples):
    """The single-process stage's output (today's code path)."""
    import torch

    torch.set_num_threads(1)  # the workers run one thread each
    store = ArtifactStore(str(tmp_path_factory.mktemp("ref")))
    manifest = embed(store, "emb", tiny_embedder(), samples=samples, input_hash=samples_hash(samples), config=CONFIG)
    return store, manifest


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      worker_dashboard_address=None) as c, Client(c) as client:
        yield client


def assert_same_output(store, manifest, reference):
    ref_store, ref_manifest = reference
    assert manifest.config == ref_manifest.config and manifest.inputs == ref_manifest.inputs
    assert sorted(manifest.outputs) == sorted(ref_manifest.outputs)
    for key in ref_manifest.outputs:  # every shard and marker, byte for byte
        assert store.read_bytes(f"emb/{key}") == ref_store.read_bytes(f"emb/{key}"), key
    assert manifest.content_hash == ref_manifest.content_hash
    keys, _ = read_embeddings(store, "emb")
    assert keys == read_embeddings(ref_store, "emb")[0]


# -- tests --------------------------------------------------------------------------------------------
def test_units_are_whole_shards_covering_the_input_once():
    units = plan_units(18, 4, unit_size=8)
    assert [(u.start, u.stop, u.shards) for u in units] == [(0, 8, (0, 1)), (8, 16, (2, 3)), (16, 18, (4,))]
    assert plan_units(0, 4) == []
    with pytest.raises(ValueError, match="unit_size must be a positive multiple of shard_size=4, got 6"):
        plan_units(18, 4, unit_size=6)


def test_in_process_units_equal_the_single_process_stage(tmp_path, samples, reference):
    store = ArtifactStore(str(tmp_path))
    source = ListSource(samples, samples_hash(samples))
    manifest = embed_units(store, "emb", spec(), source, config=CONFIG, unit_size=8, executor=InProcess(),
                           torch_threads=1)
    assert_same_output(store, manifest, reference)
    again = embed_units(store, "emb", spec(), source, config=CONFIG, executor=InProcess(), torch_threads=1)
    assert again.content_hash == manifest.content_hash  # finished: skipped (any unit_size: same output)


@pytest.mark.slow  # ~30 s here: two worker processes import torch and transformers
def test_two_dask_workers_share_the_units_and_write_the_single_process_bytes(tmp_path, samples, reference, cluster):
    from hddm_core.data import unit_runner

    store = ArtifactStore(str(tmp_path))
    manifest = embed_units(store, "emb", spec(delay_s=0.2), ListSource(samples, samples_hash(samples)),
                           config=CONFIG, executor=DaskExecutor(cluster, timeout_s=120), torch_threads=1)
    units = manifest.counts["units"]
    assert [u["unit"] for u in units] == [0, 1, 2, 3, 4]
    assert len({u["worker"] for u in units}) == 2 == len(manifest.counts["workers"])  # recorded per unit
    assert_same_output(store, manifest, reference)
    loads = cluster.run(lambda: sum(unit_runner.LOADS.values()))
    assert sorted(loads.values()) == [1, 1]  # one model load per worker, not per unit


@pytest.mark.slow
def test_a_worker_killed_mid_stage_loses_and_duplicates_nothing(tmp_path, samples, reference, cluster):
    from concurrent.futures import ThreadPoolExecutor

    store = ArtifactStore(str(tmp_path))
    run = ThreadPoolExecutor(1).submit(
        embed_units, store, "emb", spec(delay_s=1.0), ListSource(samples, samples_hash(samples)), config=CONFIG,
        executor=DaskExecutor(cluster, timeout_s=180), torch_threads=1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until a unit is running on a worker, then SIGKILL that worker
        busy = [w for w, tasks in cluster.processing().items() if any("embed-unit" in str(t) for t in tasks)]
        if busy:
            break
        time.sleep(0.1)
    assert busy, "no unit started"
    time.sleep(0.5)
    pid = cluster.run(os.getpid, workers=[busy[0]])[busy[0]]
    os.kill(pid, signal.SIGKILL)
    manifest = run.result(timeout=240)
    assert_same_output(store, manifest, reference)  # complete, no duplicate key (read_embeddings checks)


def test_a_bad_sample_is_counted_and_the_stage_goes_on(tmp_path, samples):
    from PIL import Image

    from hddm_core.data.shards import Sample

    bad = Sample(key="zz-tiny", image=Image.new("RGB", (4, 4)), caption="too small")
    items = samples[:5] + [bad] + samples[5:]
    store = ArtifactStore(str(tmp_path))
    manifest = embed_units(store, "emb", spec(refuse_width=8), ListSource(items, samples_hash(items)),
                           config=CONFIG, executor=InProcess(), torch_threads=1)
    assert manifest.counts["failures"] == {"compute: ValueError": 1}
    assert manifest.counts["streams"] == {"embeddings": len(samples)}
    keys, x = read_embeddings(store, "emb")
    assert keys == [s.key for s in samples] and len(x) == len(samples)


class _Flaky:
    """A unit function that fails with an infrastructure error `n` times, then runs."""

    def __init__(self, n):
        self.n = n

    def __call__(self, x):
        if self.n > 0:
            self.n -= 1
            raise ConnectionError("store unreachable")
        return x * 2


def test_an_infrastructure_failure_is_retried_a_bounded_number_of_times():
    assert InProcess(retries=2).run(_Flaky(2), [(3,)], ["unit-0"]) == [6]
    with pytest.raises(UnitFailed, match="unit-0 failed 3 times: ConnectionError: store unreachable"):
        InProcess(retries=2).run(_Flaky(3), [(3,)], ["unit-0"])


def _always_fails(x):
    raise RuntimeError(f"device lost on {x}")


@pytest.mark.slow  # spawned workers import torch and transformers
def test_process_pool_runs_units_and_fails_the_stage_with_the_reason(tmp_path, samples, reference):
    store = ArtifactStore(str(tmp_path))
    with ProcessPool(workers=2, retries=1) as pool:
        manifest = embed_units(store, "emb", spec(), ListSource(samples, samples_hash(samples)), config=CONFIG,
                               executor=pool, torch_threads=1)
        assert_same_output(store, manifest, reference)
        with pytest.raises(UnitFailed, match="u-1 failed 2 times: RuntimeError: device lost on 1"):
            pool.run(_always_fails, [(0,), (1,)][1:], ["u-1"])
    assert read_manifest(store, "emb") is not None
