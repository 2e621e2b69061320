"""hddmp's parser: options generated from the pydantic params, one-line errors, every docs command parses."""
from __future__ import annotations

import json
import os
import shlex

import pytest

from hddm_cli.main import build_parser, main
from hddm_core.pipeline import params as P
from tests.cli.docs_blocks import hddmp_lines, named_block


def test_every_stage_command_has_the_params_fields(capsys):
    """One definition, two faces: each field of each stage's params model is an option of its command."""
    from hddm_cli.options import option_name

    commands = {("data", "download"): P.DownloadParams, ("data", "recaption"): P.RecaptionParams,
                ("data", "embed"): P.EmbedParams, ("data", "cluster"): P.ClusterParams,
                ("data", "prepare"): P.PrepareParams, ("expert", "train"): P.TrainExpertParams,
                ("expert", "register"): P.RegisterExpertParams, ("router", "train"): P.TrainRouterParams,
                ("evaluate",): P.EvaluateParams}
    for argv, model in commands.items():
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        for name, field in model.model_fields.items():
            nested = getattr(field.annotation, "model_fields", None)
            if nested is None:
                assert option_name((name,)) in text, (argv, name)
            else:
                prefix = () if name == "training" else (name,)
                for sub in nested:
                    assert option_name(prefix + (sub,)) in text, (argv, name, sub)


def test_help_shows_defaults_choices_and_bounds(capsys):
    with pytest.raises(SystemExit):
        main(["expert", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--objective {ddpm-eps,flow-matching,x0}" in text
    assert "[default: flow-matching]" in text and f"(>= 1, <= 10000000) [default: {P.TrainingParams().steps}]" in text


def test_values_reach_the_model_and_unset_ones_keep_defaults():
    from hddm_cli.options import model_from_args

    args = build_parser().parse_args(["expert", "train", "--steps", "7", "--objective", "ddpm-eps", "--cluster-id",
                                      "2", "--no-force"])
    p = model_from_args(P.TrainExpertParams, args.specs, args)
    assert (p.training.steps, p.objective, p.cluster_id, p.force) == (7, "ddpm-eps", 2, False)
    assert p.training.lr == P.TrainingParams().lr and p.runs_prefix == "experts/runs"
    args = build_parser().parse_args(["data", "download", "--embedded-styles", "openmoji", "noto",
                                      "--embedded-limit", "20"])
    d = model_from_args(P.DownloadParams, args.specs, args)
    assert d.embedded.styles == ["openmoji", "noto"] and d.embedded.limit == 20 and d.embedded.size == 32


@pytest.mark.parametrize("argv, expected", [
    (["expert", "train", "--steps", "0"], "hddmp: error: --steps: Input should be greater than or equal to 1 (got 0)"),
    (["data", "cluster", "--n-clusters", "1"],
     "hddmp: error: --n-clusters: Input should be greater than or equal to 2 (got 1)"),
    (["data", "download", "--source", "parquet"],
     "hddmp: error: source='parquet' needs url_list_key (the parquet's key in the artifact store)"),
    (["data", "cluster", "--prefix", "../escape"], "hddmp: error: prefix '..' is not a safe artifact name"),
    (["expert", "register", "--source", "x", "--name", "a/b"], "hddmp: error: --name: expert name 'a/b' is not a safe"),
])
def test_bad_values_are_one_line_errors(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1, err


def test_bad_choice_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["expert", "train", "--objective", "diffusion"])
    assert exc.value.code == 2
    assert "argument --objective: invalid choice: 'diffusion' (choose from 'ddpm-eps', 'flow-matching', 'x0')" in capsys.readouterr().err


def test_missing_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["-q", "expert", "train", "--artifact-root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("hddmp: error: no prepare manifest under")
    assert main(["-q", "contrib", "fetch", "--run", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "no cluster manifest under" in capsys.readouterr().err
    assert main(["-q", "contrib", "prepare", "--work", str(tmp_path / "nowhere")]) == 2
    assert "run `hddmp contrib assign` first" in capsys.readouterr().err
    assert main(["-q", "expert", "validate", str(tmp_path / "missing")]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err


def test_prefect_flag_needs_an_api(capsys, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["data", "embed", "--prefect"]) == 2
    assert "--prefect needs a Prefect API" in capsys.readouterr().err


@pytest.mark.slow
def test_study_runs_and_writes_a_report(tmp_path, capsys):
    line = next(c for c in named_block("readme-evaluate") if c.startswith("hddmp study"))
    argv = shlex.split(line)[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "study")
    assert main(["-q", *argv]) == 0
    assert "report:" in capsys.readouterr().out
    assert (tmp_path / "study" / "report.md").exists()


def _placeholders(cmd: str) -> str:
    return os.path.expandvars(cmd.replace("$RUN", "/tmp/run").replace("$IMAGES", "/tmp/images"))


@pytest.mark.parametrize("doc, block, cmd", hddmp_lines(), ids=lambda v: v if isinstance(v, str) else None)
def test_docs_commands_parse(doc, block, cmd):
    """Every hddmp command in README.md and docs/*.md parses with the real parser (run: blocks are also
    executed by tests/cli/test_contributor_path.py)."""
    parser = build_parser()
    args = parser.parse_args(shlex.split(_placeholders(cmd))[1:])
    assert callable(args.func)
    if hasattr(args, "specs") and hasattr(args, "stage_cmd"):
        from hddm_cli.stage_commands import build_params

        build_params(args)  # the pydantic model accepts the values shown


def test_docs_run_blocks_exist():
    assert named_block("contributor")[-1].startswith("hddmp expert submit")
    assert any(c.startswith("hddmp data download") for c in named_block("readme-cli"))
    assert json.dumps(named_block("readme-evaluate"))


def _option(argv: list[str], option: str):
    """The argparse action of `option` in the sub-command reached by argv."""
    parser = build_parser()
    for word in argv:
        parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[word]
    return next(a for a in parser._actions if option in a.option_strings)


def test_cli_choices_are_the_vocabulary_tables():
    from hddm_core.diffusion.objectives import OBJECTIVES
    from hddm_core.inference.routing import AUTO, ROUTING_NAMES
    from hddm_core.models.presets import PRESET_NAMES

    assert _option(["expert", "train"], "--objective").choices == list(OBJECTIVES)
    assert set(_option(["expert", "train"], "--architecture").choices) == set(PRESET_NAMES)
    assert set(_option(["router", "train"], "--architecture").choices) == set(PRESET_NAMES)
    assert _option(["evaluate"], "--routing-modes").choices == list(ROUTING_NAMES)
    assert _option(["sample"], "--routing").choices == [AUTO, *ROUTING_NAMES]
