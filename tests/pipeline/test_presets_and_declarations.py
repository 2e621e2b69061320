"""Pipeline presets (demo, paper) fill defaults on both faces; expert declarations checked at the edge."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from hddm_cli.main import build_parser, main
from hddm_core.checkpoints.dit_import import DIT_TIME_INPUT
from hddm_core.diffusion.objectives import DDPM_EPS, FLOW_MATCHING
from hddm_core.models.presets import DIT_B_2, DIT_XL_2, TINY_16
from hddm_core.pipeline import params as P
from hddm_core.pipeline.presets import DEMO, PAPER, PIPELINE_PRESETS


def test_paper_preset_values():
    p = P.PipelineParams(preset=PAPER, download={"url_list_key": "laion/part-0.parquet"})
    assert p.cluster.n_clusters == 8 and len(p.objectives) == 8
    assert [p.expert_params(c).objective for c in range(8)] == [DDPM_EPS, FLOW_MATCHING, FLOW_MATCHING, DDPM_EPS,
                                                                 *[FLOW_MATCHING] * 4]  # clusters 0 and 3 DDPM
    assert (p.expert_training.architecture, p.router.training.architecture) == (DIT_XL_2, DIT_B_2)
    assert (p.prepare.latent_space, p.prepare.resolution, p.prepare.vae_model) == ("sd-vae", 256,
                                                                                   "stabilityai/sd-vae-ft-mse")
    assert (p.prepare.text_encoder, p.prepare.clip_model, p.prepare.max_length) == (
        "clip", "openai/clip-vit-large-patch14", 77)
    assert (p.embed.embedder, p.embed.dinov2_model) == ("dinov2", "facebook/dinov2-large")
    assert (p.recaption.captioner, p.recaption.llava_model) == ("llava", "llava-hf/llava-1.5-7b-hf")
    assert (p.evaluate.steps, p.evaluate.cfg_scale) == (50, 7.5)


def test_paper_preset_needs_the_laion_parquet():
    with pytest.raises(ValidationError, match="url_list_key"):
        P.PipelineParams(preset=PAPER)


def test_set_fields_win_and_the_form_case_takes_the_preset():
    p = P.PipelineParams(preset=PAPER, cluster={"n_clusters": 6}, download={"url_list_key": "x.parquet"},
                         expert_training=P.TrainingParams(steps=10))
    assert p.cluster.n_clusters == 6 and p.expert_training.steps == 10
    assert p.expert_training.architecture == DIT_XL_2  # unset fields of a given model still come from the preset
    # the Prefect form sends every field at its plain default: the preset's values replace those
    form = P.PipelineParams().model_dump(mode="json")
    form.update(preset=PAPER, artifact_root=None)
    form["download"]["url_list_key"] = "x.parquet"
    assert P.PipelineParams.model_validate(form).cluster.n_clusters == 8
    # from_preset (the command line's reading): a value given is kept even at the plain default
    explicit = P.PipelineParams.from_preset(PAPER, cluster={"n_clusters": 4}, download={"source": "embedded"})
    assert (explicit.cluster.n_clusters, explicit.download.source, explicit.preset) == (4, "embedded", PAPER)
    assert explicit.prepare.max_length == 77


def test_demo_params_are_the_demo_preset():
    d = P.demo_params("/tmp/run")
    assert d.preset == DEMO and d.expert_training.architecture == TINY_16 and d.expert_training.steps == 1000
    assert d.cluster.n_clusters == 4 and d.cluster.balance
    # the demo's sizes are the plain defaults (the Prefect form's Quick run): the preset fills nothing
    assert PIPELINE_PRESETS[DEMO] == {} and d.model_copy(update={"preset": None}) == P.PipelineParams(
        artifact_root="/tmp/run")


def test_command_line_values_are_explicit_even_at_the_plain_default():
    from hddm_cli.stage_commands import pipeline_params

    args = build_parser().parse_args(["pipeline", "--preset", PAPER, "--cluster-n-clusters", "4",
                                      "--download-url-list-key", "x.parquet"])
    p = pipeline_params(args)
    assert p.cluster.n_clusters == 4  # 4 is also the plain default: the command line still means it
    assert p.prepare.max_length == 77


def test_pipeline_help_shows_the_presets_values(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["pipeline", "--preset", PAPER, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--cluster-n-clusters INT K: number of clusters = number of experts. (>= 2, <= 1024) [default: 8]",
                  f"[default: {DIT_XL_2}]", "[default: 77]", "[default: 7.5]", "[default: 50]",
                  "[default: facebook/dinov2-large]", "[default: llava-hf/llava-1.5-7b-hf]",
                  "[default: stabilityai/sd-vae-ft-mse]", f"[default: {DIT_B_2}]"):
        assert shown in text, shown
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    plain = " ".join(capsys.readouterr().out.split())
    assert "[default: 4]" in plain and "[default: 8]" not in plain.split("--cluster-n-clusters")[1][:120]


# -- expert declarations -------------------------------------------------------------------------------
def test_init_from_dit_reads_round_999t():
    p = P.TrainExpertParams(objective=FLOW_MATCHING, init="DiT-XL-2-256x256.pt")
    assert p.time_input == DIT_TIME_INPUT
    assert P.TrainExpertParams(objective=FLOW_MATCHING).time_input is None


@pytest.mark.parametrize("fields, names", [
    ({"objective": DDPM_EPS, "schedule": "linear"}, "schedule 'linear' does not fit objective 'ddpm-eps'"),
    ({"objective": FLOW_MATCHING, "schedule": "cosine"}, "schedule 'cosine' does not fit objective 'flow-matching'"),
    ({"objective": FLOW_MATCHING, "init": "dit.pt", "time_input": "scaled-1000"},
     "time_input 'scaled-1000' does not fit init 'dit.pt'"),
])
def test_invalid_declarations_name_the_field(fields, names):
    with pytest.raises(ValidationError, match=names):
        P.TrainExpertParams(**fields)


def test_valid_overrides_reach_the_expert_params():
    p = P.PipelineParams(objectives=[DDPM_EPS, FLOW_MATCHING], expert_overrides=[
        {"cluster_id": 0, "schedule": "cosine"}, {"cluster_id": 1, "init": "runs/dit-init"}])
    e0, e1, e2 = (p.expert_params(c) for c in range(3))
    assert (e0.objective, e0.schedule, e0.init) == (DDPM_EPS, "cosine", "scratch")
    assert (e1.init, e1.time_input) == ("runs/dit-init", DIT_TIME_INPUT)
    assert (e2.schedule, e2.init, e2.time_input) == (None, "scratch", None)


def test_a_bad_override_is_one_line_naming_it(capsys):
    code = main(["pipeline", "--objectives", "ddpm-eps", "--expert-overrides",
                 '{"cluster_id": 2, "schedule": "linear"}'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "expert_overrides[0].schedule 'linear' does not fit objective 'ddpm-eps'" in err


def test_expert_train_options_carry_init_schedule_time_input():
    from hddm_cli.options import model_from_args

    args = build_parser().parse_args(["expert", "train", "--objective", "ddpm-eps", "--schedule", "cosine",
                                      "--init", "dit.pt"])
    p = model_from_args(P.TrainExpertParams, args.specs, args)
    assert (p.schedule, p.init, p.time_input) == ("cosine", "dit.pt", DIT_TIME_INPUT)


def test_training_config_carries_the_declaration():
    from hddm_core.training.config import ExpertTrainConfig

    p = P.TrainExpertParams(objective=DDPM_EPS, schedule="cosine",
                            training=P.TrainingParams(gradient_checkpointing=True))
    c = ExpertTrainConfig.from_params(p.training, p, latent_size=16, device="cpu")
    assert c.objective_overrides() == {"schedule": "cosine"} and c.gradient_checkpointing
