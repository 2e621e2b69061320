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
    assert defs["ClusterSection"]["properties"]["n_clusters"]["minimum"] == 2
    assert "description" in defs["ClusterSection"]["properties"]["n_clusters"]
    objective = defs["TrainingParams"]["properties"]["architecture"]
    assert "tiny-16" in objective["enum"]
    assert set(defs["EvaluateSection"]["properties"]["routing_modes"]["items"]["enum"]) >= {"top-1", "full", "threshold"}


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


def test_literals_are_the_vocabulary_tables():
    """The pydantic choices (and so the Prefect form and the CLI) are the owning modules' tables."""
    import typing

    from hddm_core.diffusion.objectives import OBJECTIVES
    from hddm_core.inference.routing import ROUTING_NAMES
    from hddm_core.models.presets import PRESET_NAMES

    assert typing.get_args(P.Objective) == tuple(OBJECTIVES)
    assert set(typing.get_args(P.Architecture)) == set(PRESET_NAMES)
    assert typing.get_args(P.RoutingMode) == ROUTING_NAMES
    schema = P.PipelineParams.model_json_schema()["$defs"]
    assert schema["EvaluateSection"]["properties"]["routing_modes"]["items"]["enum"] == list(ROUTING_NAMES)
    objective = P.TrainExpertParams.model_json_schema()["properties"]["objective"]
    assert objective["enum"] == list(OBJECTIVES)


def _prepared_info():
    return dict(latent_space="pixel", latent_channels=3, latent_size=16, latent_scale=1.0, image_resolution=16)


def test_expert_config_carries_every_same_named_field_from_the_params():
    """No hand-written copy: each field the params and the config share arrives with the params' value."""
    import dataclasses

    from hddm_core.training.config import ExpertTrainConfig

    training = P.TrainingParams(architecture="tiny", steps=17, batch_size=5, lr=3e-4, warmup_steps=2, ema_decay=0.5,
                                checkpoint_interval=4, seed=9, device="cpu", precision="bf16")
    params = P.TrainExpertParams(cluster_id=3, objective="x0", training=training, caption_dropout=0.25,
                                 clustering_version="v1")
    config = ExpertTrainConfig.from_params(params.training, params, **_prepared_info())
    fields = {f.name for f in dataclasses.fields(ExpertTrainConfig)}
    shared = {**{k: v for k, v in training.model_dump().items() if k in fields},
              **{k: v for k, v in params.model_dump().items() if k in fields}}
    assert set(shared) >= {"steps", "lr", "ema_decay", "architecture", "objective", "cluster_id", "caption_dropout"}
    assert {k: getattr(config, k) for k in shared} == shared
    # derived values win over the params' (the resolved device, the batch capped by the dataset)
    assert ExpertTrainConfig.from_params(training, params, device="cuda", batch_size=2,
                                         **_prepared_info()).batch_size == 2


def test_a_field_added_to_both_sides_needs_no_copy():
    """A params model that grows a field the config already has (weight_decay) carries it automatically."""
    from pydantic import BaseModel

    from hddm_core.training.config import RouterTrainConfig

    class Extended(P.TrainingParams):
        weight_decay: float = 0.0

    class Router(BaseModel):
        time_sampling: str = "logit-normal"
        eval_samples_per_bucket: int = 7
        prefix: str = "router"  # not a config field: ignored

    cfg = RouterTrainConfig.from_params(Extended(weight_decay=0.05, device="cpu"), Router(), num_clusters=3,
                                        **_prepared_info())
    assert (cfg.weight_decay, cfg.time_sampling, cfg.eval_samples_per_bucket, cfg.num_clusters) == (
        0.05, "logit-normal", 7, 3)


def test_from_params_validates_once_and_rejects_unknown_derived_fields():
    from hddm_core.training.config import ExpertTrainConfig

    with pytest.raises(ValueError, match=r"unknown ExpertTrainConfig fields \['colour'\]"):
        ExpertTrainConfig.from_params(P.TrainingParams(device="cpu"), colour="red")
    with pytest.raises(ValueError, match=r"unknown objective 'score'; valid: \['ddpm-eps', 'flow-matching', 'x0'\]"):
        ExpertTrainConfig.from_params({"objective": "score"})
