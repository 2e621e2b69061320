"""Parameter models: one definition for the UI form and the CLI; bad input rejected before any work."""
import pytest
from pydantic import ValidationError

from hddm_core.pipeline import params as P


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "", ".hidden", "a\\b", "s3://x", "x" * 200])
def test_register_rejects_path_tricks(name):
    with pytest.raises(ValidationError, match="expert name"):
        P.RegisterExpertParams(source="/tmp/e", name=name)


@pytest.mark.parametrize("prefix", ["../up", "/abs", "a//b", "a/./b", "a/.."])
def test_prefixes_are_checked(prefix):
    with pytest.raises(ValidationError):
        P.EmbedParams(prefix=prefix)
    with pytest.raises(ValidationError):
        P.RegisterExpertParams(source="x", name="ok", experts_prefix=prefix)


def test_bounds_enums_and_cross_field_rules():
    with pytest.raises(ValidationError, match="n_clusters"):
        P.ClusterParams(n_clusters=1)
    with pytest.raises(ValidationError, match="level_sizes"):
        P.ClusterParams(n_clusters=4, level_sizes=[16, 8])
    with pytest.raises(ValidationError, match="url_list_key"):
        P.DownloadParams(source="parquet")
    with pytest.raises(ValidationError):
        P.TrainExpertParams(objective="diffusion")
    with pytest.raises(ValidationError):
        P.EvaluateParams(routing_modes=[])
    with pytest.raises(ValidationError, match="credentials"):
        P.EmbedParams(artifact_root="s3://key:secret@bucket/x")
    with pytest.raises(ValidationError):
        P.PipelineParams(unknown_field=1)


def test_json_schema_carries_descriptions_enums_and_bounds():
    schema = P.PipelineParams.model_json_schema()
    defs = schema["$defs"]
    assert defs["ClusterParams"]["properties"]["n_clusters"]["minimum"] == 2
    assert "description" in defs["ClusterParams"]["properties"]["n_clusters"]
    objective = defs["TrainingParams"]["properties"]["architecture"]
    assert "tiny-16" in objective["enum"]
    assert set(defs["EvaluateParams"]["properties"]["routing_modes"]["items"]["enum"]) >= {"top-1", "full", "threshold"}


def test_pipeline_assigns_mixed_objectives_and_propagates_root():
    p = P.PipelineParams(artifact_root="/tmp/r", force=True, objectives=["ddpm-eps", "flow-matching"])
    assert [p.expert_params(c).objective for c in range(4)] == ["ddpm-eps", "flow-matching"] * 2
    assert p.expert_params(3).artifact_root == "/tmp/r" and p.expert_params(3).force
    assert p.stage(p.embed).artifact_root == "/tmp/r"


def test_demo_params_are_valid_and_small():
    d = P.demo_params("/tmp/demo")
    assert d.cluster.n_clusters == 4 and d.recaption.captioner == "passthrough"
    assert d.embed.embedder == "inception-v3-fid" and d.expert_training.architecture == "tiny-16"
    # round trip through JSON, as the Prefect UI and deployments pass it
    assert P.PipelineParams.model_validate_json(d.model_dump_json()) == d


def test_flow_parameter_schema_renders_the_models(prefect_free_import=None):
    from prefect.utilities.callables import parameter_schema

    from hddm_flows.pipeline import pipeline
    from hddm_flows.stages import register_expert

    schema = parameter_schema(pipeline.fn).model_dump()
    assert "PipelineParams" in str(schema["properties"]["params"])
    reg = parameter_schema(register_expert.fn).model_dump()
    assert "params" in reg["required"]
