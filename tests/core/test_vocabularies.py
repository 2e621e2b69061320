"""Each vocabulary (routing modes, objectives, architecture presets, prediction kinds, pipeline presets) is written in ONE
source file, its table's module; everything else derives from the table. The scan reads every string
constant of the repository's Python source (tests aside) with ast."""
from __future__ import annotations

import ast
import pathlib

import pytest

from hddm_core.diffusion import objectives, predictions
from hddm_core.inference import routing
from hddm_core.models import presets
from hddm_core.pipeline import presets as pipeline_presets

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCANNED = ("hddm_core", "hddm_cli", "flows", "tasks", "infra", "benchmarks", "docs")

# vocabulary -> (its one home file, its names, read from the table itself)
VOCABULARIES = {
    "routing modes": ("hddm_core/inference/routing.py",
                      {*routing.ROUTING_NAMES, *routing.MODES, *routing.WITHIN, routing.AUTO}),
    "objectives": ("hddm_core/diffusion/objectives.py", set(objectives.OBJECTIVES)),
    "architecture presets": ("hddm_core/models/presets.py", set(presets.PRESET_NAMES)),
    "prediction kinds": ("hddm_core/diffusion/predictions.py", set(predictions.PREDICTIONS)),
    "pipeline presets": ("hddm_core/pipeline/presets.py", set(pipeline_presets.PIPELINE_PRESET_NAMES)),
}
# The same word with another meaning, and where that other meaning is written (not a routing mode there).
HOMONYMS = {
    "single": ({"hddm_core/models/presets.py", "hddm_core/models/dit.py", "hddm_core/models/router.py",
                "hddm_core/checkpoints/dit_import.py"}, "AdaLN-Single, an adaln kind (presets.ADALN_KINDS)"),
    "auto": ({"hddm_core/pipeline/params_base.py"}, "the 'auto' device"),
    "demo": ({"hddm_cli/main.py"}, "the `hddmp demo` command"),
    "paper": ({"hddm_core/pipeline/study.py", "hddm_core/pipeline/report.py"}, "the paper's column of a table"),
}


def string_constants(paths) -> dict[str, set[str]]:
    """{string constant: {files (relative to ROOT) where it is written}}."""
    found: dict[str, set[str]] = {}
    for path in paths:
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.setdefault(node.value, set()).add(rel)
    return found


def misplaced(found: dict[str, set[str]]) -> list[str]:
    """'<name> (<vocabulary>) written in <file>' for every name outside the homes allowed to write it."""
    homes: dict[str, set[str]] = {}
    owner: dict[str, list[str]] = {}
    for vocabulary, (home, names) in VOCABULARIES.items():
        for name in names:  # a name in two vocabularies (the x0 objective and prediction) may sit in both homes
            homes.setdefault(name, set()).add(home)
            owner.setdefault(name, []).append(vocabulary)
    for name, (files, _why) in HOMONYMS.items():
        homes[name] |= files
    return sorted(f"{name!r} ({', '.join(owner[name])}) written in {f}"
                  for name in homes for f in found.get(name, set()) - homes[name])


def _source_files():
    return [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]


def test_every_vocabulary_name_is_written_in_one_file_only():
    assert misplaced(string_constants(_source_files())) == []


def test_each_vocabulary_is_written_in_its_home():
    found = string_constants(_source_files())
    for vocabulary, (home, names) in VOCABULARIES.items():
        assert names and all(home in found.get(n, set()) for n in names), vocabulary


def test_the_scan_catches_a_name_written_in_a_second_place():
    """The tree's constants plus one stray module writing a name of each vocabulary: every one is reported."""
    found = string_constants(_source_files())
    source = 'MODE = "top-2"\nOBJ = {"flow-matching": 1}\nARCH = "XL/2"\nKIND = "velocity"\nADALN = "single"\n'
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.setdefault(node.value, set()).add("hddm_core/pipeline/_stray_for_test.py")
    bad = misplaced(found)
    assert len(bad) == 5 and all("_stray_for_test.py" in b for b in bad), bad
    assert any("'single' (routing modes)" in b for b in bad)  # a homonym is allowed only where it means the other thing


def test_homonyms_are_still_needed():
    """An exemption that no longer matches anything is removed, so it cannot hide a stray name."""
    found = string_constants(_source_files())
    for name, (files, why) in HOMONYMS.items():
        for f in files:
            assert f in found.get(name, set()), (name, f, why)


def test_routing_names_table_is_consistent():
    assert routing.ROUTING_NAMES == tuple(routing.NAMED_ROUTINGS)
    assert routing.CHOICES_WITH_AUTO == (routing.AUTO, *routing.ROUTING_NAMES)
    assert routing.AUTO not in routing.ROUTING_NAMES
    assert set(objectives.OBJECTIVE_NAMES) == set(objectives.OBJECTIVES)
    for spec in objectives.OBJECTIVES.values():
        assert spec["prediction"] in predictions.PREDICTIONS


@pytest.mark.parametrize("prediction, velocity", [("velocity", True), ("eps", False), ("x0", False)])
def test_is_velocity_is_the_one_kind_test(prediction, velocity):
    assert predictions.is_velocity(prediction) is velocity


def test_is_velocity_rejects_unknown_kinds():
    with pytest.raises(ValueError, match=r"unknown prediction type 'v'; valid: \['eps', 'v-prediction', 'velocity', 'x0'\]"):
        predictions.is_velocity("v")
