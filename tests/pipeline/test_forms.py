"""The Prefect forms: every flow's parameter schema (what the UI renders and the server validates a run
against) is readable, hides what the pipeline sets itself, and refuses bad combinations before a run."""
from __future__ import annotations

import itertools
import typing

import pytest
from pydantic import BaseModel, ValidationError

from hddm_core.checkpoints.dit_import import DIT_TIME_INPUT
from hddm_core.diffusion.objectives import DDPM_EPS, FLOW_MATCHING, OBJECTIVE_NAMES
from hddm_core.pipeline import params as P
from hddm_core.pipeline.declarations import SCHEDULE_NAMES, TimeInput
from hddm_core.pipeline.presets import PAPER


def _flows():
    from prefect import Flow

    from hddm_flows import pipeline, stages

    found = {f.name: f for m in (pipeline, stages) for f in vars(m).values() if isinstance(f, Flow)}
    assert {"pipeline", "download", "train-expert", "evaluate", "register-expert"} <= set(found)
    return found


def _schema(flow_name: str) -> dict:
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(_flows()[flow_name].fn).model_dump_for_openapi()  # what a deployment stores


def _errors(flow_name: str, params: dict) -> list[str]:
    from prefect.utilities.schema_tools.validation import validate

    return [f"{e.json_path}: {e.message}" for e in validate({"params": params}, _schema(flow_name))]


CLASS_NAMES = {name for name, obj in vars(P).items() if isinstance(obj, type) and issubclass(obj, BaseModel)}


@pytest.mark.parametrize("flow_name", sorted(_flows()))
def test_every_field_is_described_and_titled_in_words(flow_name):
    schema = _schema(flow_name)
    checked = 0
    for key, definition in schema["definitions"].items():
        assert definition.get("title") not in CLASS_NAMES | {key}, f"{flow_name}: section {key} titled by its class"
        for name, prop in definition.get("properties", {}).items():
            checked += 1
            assert prop.get("description"), f"{flow_name}: {key}.{name} has no description"
            assert prop.get("title") not in CLASS_NAMES, f"{flow_name}: {key}.{name} titled {prop['title']!r}"
            assert prop.get("title") != "Steps", f"{flow_name}: {key}.{name}: which steps?"
    assert checked >= 5


def test_the_pipeline_form_puts_the_common_fields_first_and_names_its_sections():
    definition = _schema("pipeline")["definitions"]["PipelineParams"]
    props = definition["properties"]
    assert list(props)[:5] == list(P.PipelineParams.form_order)
    assert [props[k]["position"] for k in props] == list(range(len(props)))
    defs = _schema("pipeline")["definitions"]
    titles = [props[k].get("title") or defs[props[k]["$ref"].rsplit("/", 1)[1]]["title"]
              for k in props if "$ref" in props[k]]
    assert len(titles) == len(set(titles)) == 8 and "Download (LAION or embedded)" in titles
    assert {"Expert training loop", "Router training"} <= set(titles)


def test_the_pipeline_form_hides_what_the_pipeline_sets():
    defs = _schema("pipeline")["definitions"]
    for section, (kind, sets) in P.PIPELINE_SETS.items():
        shown = set(defs[type(P.PipelineParams().__getattribute__(section)).__name__]["properties"])
        hidden = set(kind.model_fields) - shown
        assert hidden == {*P.EVERY_STAGE_SETS, *sets, *(n for s, n in P.RUN_SETS if s == section)}, section
        assert {"artifact_root", "force"} <= hidden


@pytest.mark.parametrize("section, name, where", [
    ("download", "artifact_root", "top-level artifact_root"), ("cluster", "force", "top-level force"),
    ("router", "prepare_prefix", "prepare.prefix"), ("prepare", "cluster_prefix", "cluster.prefix"),
    ("embed", "download_prefix", "download.prefix"), ("evaluate", "experts", "`evaluate` flow"),
    ("evaluate", "router", "`evaluate` flow")])
def test_a_field_the_pipeline_sets_is_refused_in_one_line_naming_where(section, name, where):
    value = ["e"] if name == "experts" else True if name == "force" else "x"
    for build in (lambda: P.PipelineParams.model_validate({section: {name: value}}),
                  lambda: P.PipelineParams.from_preset(PAPER, **{section: {name: value}})):
        with pytest.raises(ValidationError) as err:
            build()
        msg = err.value.errors()[0]["msg"]
        assert f"{section}.{name} is set by the pipeline" in msg and where in msg and "\n" not in msg
    kind = P.PIPELINE_SETS[section][0]
    given = kind(**{name: value}) if name not in ("artifact_root",) else kind(artifact_root="/r")
    with pytest.raises(ValidationError, match=f"{section}.{name} is set by the pipeline"):
        P.PipelineParams(**{section: given})  # the API: a stage's model with the field set


def test_the_cli_has_no_option_for_what_the_pipeline_sets():
    from hddm_cli.main import build_parser

    options = {o for a in build_parser()._subparsers._group_actions[0].choices["pipeline"]._actions
               for o in a.option_strings}
    assert "--router-training-steps" not in options and "--router-steps" in options
    assert not {"--download-artifact-root", "--embed-force", "--router-prepare-prefix", "--evaluate-experts",
                "--cluster-embed-prefix"} & options
    assert {"--artifact-root", "--force", "--prepare-prefix", "--evaluate-steps"} <= options


def test_the_stages_read_the_prefixes_of_the_stages_before_them():
    p = P.PipelineParams(artifact_root="/tmp/r", force=True, download={"prefix": "d2"}, embed={"prefix": "e2"},
                         cluster={"prefix": "c2"}, prepare={"prefix": "p2"}, recaption={"prefix": "r2"})
    assert p.stage(p.recaption).download_prefix == p.stage(p.embed).download_prefix == "d2"
    cluster, prepare = p.stage(p.cluster), p.stage(p.prepare)
    assert (cluster.embed_prefix, cluster.download_prefix) == ("e2", "d2")
    assert (prepare.download_prefix, prepare.cluster_prefix, prepare.recaption_prefix) == ("d2", "c2", "r2")
    evaluate, router = p.stage(p.evaluate), p.stage(p.router)
    assert (evaluate.prepare_prefix, evaluate.cluster_prefix, router.prepare_prefix) == ("p2", "c2", "p2")
    assert p.expert_params(1).prepare_prefix == "p2"
    assert type(router) is P.TrainRouterParams and (router.artifact_root, router.force) == ("/tmp/r", True)
    assert router.training == p.router.training


def test_quick_run_defaults_are_the_demos_sizes():
    p = P.PipelineParams()
    assert p.download.source == "embedded" and p.download.embedded.limit == 256  # not all 3,655 emoji
    assert (p.expert_training.architecture, p.expert_training.steps) == ("tiny-16", 1000)
    assert (p.router.training.steps, p.router.training.batch_size) == (400, 64)
    assert (p.cluster.n_clusters, p.prepare.resolution, p.evaluate.n_prompts) == (4, 16, 6)
    # the stage flows' own defaults are the same small sizes
    assert P.DownloadParams().embedded.limit == 256 and P.TrainExpertParams().training.steps == 1000
    assert P.TrainRouterParams().training == p.router.training
    quick = _schema("pipeline")["properties"]["params"]["default"]  # what Quick run submits
    assert quick["download"]["embedded"]["limit"] == 256 and _errors("pipeline", quick) == []


def test_the_paper_preset_still_sets_what_the_demo_defaults_changed():
    p = P.PipelineParams(preset=PAPER, download={"url_list_key": "x.parquet"})
    assert p.cluster.balance is False and p.router.eval_samples_per_bucket == 64
    assert p.download.embedded.limit is None and p.prepare.max_length == 77
    assert (p.expert_training.steps, p.expert_training.lr, p.expert_training.ema_decay) == (400_000, 1e-4, 0.9999)
    assert (p.evaluate.n_prompts, p.evaluate.images_per_prompt, p.evaluate.reference_images) == (100, 10, 10000)


# -- the server's validation (JSON Schema), without a server ----------------------------------------------
@pytest.mark.parametrize("flow_name, params, says", [
    ("pipeline", {"evaluate": {"fid_samples": 100}}, "params.evaluate.fid_samples"),
    ("evaluate", {"fid_samples": 2048}, "params.fid_samples"),
    ("pipeline", {"preset": PAPER}, "download"),
    ("pipeline", {"preset": PAPER, "download": {}}, "url_list_key"),
    ("download", {"source": "parquet"}, "url_list_key"),
    ("pipeline", {"expert_overrides": [{"cluster_id": 0, "objective": DDPM_EPS, "schedule": "linear"}]}, "linear"),
    ("pipeline", {"expert_init": "dit.pt", "expert_overrides": [{"cluster_id": 1, "time_input": "scaled-1000"}]},
     "scaled-1000"),
    ("pipeline", {"expert_init": " "}, "expert_init"),
    ("pipeline", {"download": {"artifact_root": "/x"}}, "artifact_root"),
    ("pipeline", {"router": {"prepare_prefix": "p"}}, "prepare_prefix"),
    ("pipeline", {"prepare": {"prefix": "../up"}}, "../up"),
    ("train-expert", {"schedule": "cosine"}, "cosine"),  # the default objective (flow matching)
    ("train-expert", {"init": "dit.pt", "time_input": "scaled-1000"}, "scaled-1000"),
    ("register-expert", {"source": "/e", "name": "a/b"}, "a/b"),
    ("cluster", {"level_sizes": []}, "params.level_sizes"),
    ("cluster", {"max_sample_bytes": 512, "balance": True}, "params.balance"),
])
def test_the_server_schema_refuses_bad_parameters(flow_name, params, says):
    errors = _errors(flow_name, params)
    assert errors, f"{flow_name} accepted {params}"
    assert any(says in e for e in errors), errors
    with pytest.raises((ValidationError, ValueError)):  # and pydantic refuses the same
        kind = P.PipelineParams if flow_name == "pipeline" else typing.get_type_hints(_flows()[flow_name].fn)["params"]
        kind.model_validate(params)


@pytest.mark.parametrize("flow_name, params", [
    ("pipeline", {"evaluate": {"fid_samples": 2049}}),
    ("pipeline", {"preset": PAPER, "download": {"url_list_key": "laion/part-0.parquet"}}),
    ("pipeline", {"expert_init": "dit.pt", "expert_overrides": [{"cluster_id": 1, "time_input": DIT_TIME_INPUT},
                                                                {"cluster_id": 0, "init": "scratch",
                                                                 "time_input": "scaled-1000"}]}),
    ("download", {"source": "parquet", "url_list_key": "x.parquet"}),
    ("register-expert", {"source": "/e", "name": "cluster-000.v1"}),
    ("evaluate", {}),
    ("cluster", {"max_sample_bytes": 512}),  # balance then defaults to false (the sampled fit)
])
def test_the_server_schema_accepts_good_parameters(flow_name, params):
    assert _errors(flow_name, params) == []


def test_schema_and_pydantic_agree_on_every_expert_declaration():
    """Every objective x schedule x time input x init: the JSON Schema's verdict is pydantic's."""
    schema = _schema("train-expert")
    from prefect.utilities.schema_tools.validation import validate

    inits = [None, "scratch", "runs/converted-expert", "DiT-XL-2-256x256.pt"]
    cases = itertools.product([None, *OBJECTIVE_NAMES], [None, *SCHEDULE_NAMES], [None, *typing.get_args(TimeInput)],
                              inits)
    disagree = []
    for objective, schedule, time_input, init in cases:
        params = {k: v for k, v in dict(objective=objective, schedule=schedule, time_input=time_input,
                                        init=init).items() if v is not None}
        try:
            P.TrainExpertParams.model_validate(params)
            ok = True
        except ValidationError:
            ok = False
        if ok != (not validate({"params": params}, schema)):
            disagree.append(params)
    assert disagree == [], disagree[:5]
    assert FLOW_MATCHING in OBJECTIVE_NAMES


def test_the_sampled_fit_turns_the_balanced_default_off():
    assert P.ClusterParams().balance and not P.ClusterParams(max_sample_bytes=512).balance


def test_what_json_schema_cannot_say_is_still_refused_by_pydantic():
    """level_sizes ending at K and an override's schedule against an objective taken from `objectives`
    compare two values: the schema lets them through, the flow's pydantic validation refuses them."""
    assert _errors("cluster", {"n_clusters": 4, "level_sizes": [16, 8]}) == []
    with pytest.raises(ValidationError, match="level_sizes"):
        P.ClusterParams(n_clusters=4, level_sizes=[16, 8])
    bad = {"objectives": [DDPM_EPS], "expert_overrides": [{"cluster_id": 0, "schedule": "linear"}]}
    assert _errors("pipeline", bad) == []
    with pytest.raises(ValidationError, match="schedule 'linear' does not fit"):
        P.PipelineParams.model_validate(bad)
