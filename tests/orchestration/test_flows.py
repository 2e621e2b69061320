"""The pipeline flow end to end in-process (under the session's prefect_test_harness), at tiny scale:
every stage runs for real; a second run reuses every finished stage; invalid input fails before work."""
import os

import pytest

from .conftest import tiny_params


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, prefect_harness):
    from hddm_flows.pipeline import pipeline

    root = str(tmp_path_factory.mktemp("pipeline"))
    return root, pipeline(tiny_params(root))


@pytest.mark.slow
def test_pipeline_runs_every_stage_and_writes_the_report(first_run):
    root, result = first_run
    report = result["report"].removeprefix("file://")
    assert os.path.isfile(report)
    folder = os.path.dirname(report)
    text = open(report).read()
    assert "top-1" in text and "threshold" in text and "clusters.png" in text
    assert os.path.isfile(os.path.join(folder, "clusters.png"))
    assert any(f.endswith(".png") for f in os.listdir(os.path.join(folder, "grids")))
    assert len(result["experts"]) == 2
    assert any("ddpm-eps" in e for e in result["experts"]) and any("flow-matching" in e for e in result["experts"])
    registry = os.path.join(root, "experts", "registry")
    assert sorted(os.listdir(registry)) == ["cluster-000-ddpm-eps", "cluster-001-flow-matching"]


@pytest.mark.slow
def test_second_run_reuses_finished_stages(first_run):
    from hddm_flows.pipeline import pipeline
    from hddm_core.pipeline import stages

    root, result = first_run
    mtime = os.path.getmtime(os.path.join(root, "download", "_manifest.json"))
    again = pipeline(tiny_params(root))
    assert again["report"] == result["report"] and again["experts"] == result["experts"]
    assert os.path.getmtime(os.path.join(root, "download", "_manifest.json")) == mtime
    p = tiny_params(root)
    for ref in (stages.run_download(p.stage(p.download)), stages.run_embed(p.stage(p.embed)),
                stages.run_train_expert(p.expert_params(0)), stages.run_train_router(p.stage(p.router))):
        assert ref.reused, ref.stage


@pytest.mark.slow
def test_invalid_parameters_are_rejected_before_any_work(prefect_harness, tmp_path):
    from hddm_flows.stages import cluster, register_expert

    with pytest.raises(Exception, match="n_clusters"):
        cluster(params={"artifact_root": str(tmp_path), "n_clusters": 0})
    with pytest.raises(Exception, match="expert name"):
        register_expert(params={"artifact_root": str(tmp_path), "source": str(tmp_path), "name": "../../etc"})
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_map_stage_runs_on_a_dask_cluster_with_gpu_resources(prefect_harness, tmp_path):
    """on_dask submits the stage task through prefect-dask's DaskTaskRunner to the given scheduler."""
    from prefect import task

    from hddm_flows.dask_runner import on_dask
    from hddm_core.pipeline.params import EmbedParams
    from hddm_infra.dask.local_cluster import local_cluster

    @task(timeout_seconds=120)
    def where(params):
        from distributed import get_worker

        worker = get_worker()
        return dict(getattr(worker, "total_resources", None) or worker.state.total_resources)

    with local_cluster(1, gpu_resource=True) as cluster:
        params = EmbedParams(artifact_root=str(tmp_path), dask_address=cluster.scheduler_address, device="cuda")
        assert on_dask(where, params) == {"GPU": 1}
