"""The prefect-dask wrapper once: the embed stage's work units as Prefect task runs on a DaskTaskRunner
(a 2-worker cluster on 127.0.0.1 in this process, under a real Prefect server from the test harness),
writing the same bytes as the single-process stage."""
from __future__ import annotations

import pytest

from hddm_core.data.embed import EmbedConfig, embed, embed_units
from hddm_core.data.units import ListSource
from hddm_core.storage import ArtifactStore
from tests.data.fixtures_b import GroupEmbedder, samples_hash, shape_samples


def group_embedder():
    return GroupEmbedder()


@pytest.mark.slow  # starts a Prefect server
def test_units_run_as_prefect_task_runs_on_dask(tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness
    from prefect_dask import DaskTaskRunner

    from hddm_flows.unit_map import PrefectTasks
    from hddm_core.data.unit_runner import ModelSpec
    from hddm_infra.dask.local_cluster import local_cluster

    samples = shape_samples(per_group=4)  # 12 samples, 3 units of one shard
    ref_store, ws = ArtifactStore(str(tmp_path / "ref")), ArtifactStore(str(tmp_path / "units"))
    cfg = EmbedConfig(batch_size=2, shard_size=4)
    ref = embed(ref_store, "emb", GroupEmbedder(), samples=samples, input_hash=samples_hash(samples), config=cfg)
    with prefect_test_harness(server_startup_timeout=60), local_cluster(2) as cluster:
        @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        def units_flow():
            return embed_units(ws, "emb", ModelSpec(f"{__name__}:group_embedder"),
                               ListSource(samples, samples_hash(samples)), config=cfg, executor=PrefectTasks())

        manifest = units_flow()
        with get_client(sync_client=True) as client:
            names = sorted(r.name for r in client.read_task_runs() if r.state and r.state.is_completed())
    assert manifest.content_hash == ref.content_hash
    for key in ref.outputs:
        assert ws.read_bytes(f"emb/{key}") == ref_store.read_bytes(f"emb/{key}"), key
    assert [n for n in names if n.startswith("embed-unit-")] == ["embed-unit-00000", "embed-unit-00001",
                                                                 "embed-unit-00002"]
