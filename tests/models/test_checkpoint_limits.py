"""A small manifest cannot make the validator build, allocate, read or wait without bound.

Every architecture field is bounded (limits.ARCH_LIMITS, derived from the presets), the parameter
count is computed by formula (checked here against the built models) before anything is built, only
regular files are read, and each validation has a wall-clock budget."""
import json
import os
import time

import pytest

from hddm_core.checkpoints import save_expert, validate_expert
from hddm_core.checkpoints.limits import ARCH_LIMITS, MARGIN, parameter_count, stored_elements
from hddm_core.models import (PRESET_NAMES, build_expert_model, build_router, expert_config, meta_parameter_count,
                              router_config)

from .test_experts import FIELDS, _edit_manifest, _manifest_path


@pytest.fixture
def saved(tmp_path, tiny16):
    return save_expert(str(tmp_path), "e", tiny16, FIELDS)


def _codes(checks):
    return {c.code for c in checks if not c.ok}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("change", [{"depth": 2_000_000}, {"input_size": 1 << 20, "patch_size": 1},
                                    {"hidden_size": 1 << 20, "num_heads": 1}, {"text_dim": 10 ** 9},
                                    {"mlp_ratio": 1e6}])
def test_absurd_architectures_are_refused_before_anything_is_built(saved, change):
    raw = json.load(open(_manifest_path(saved)))
    _edit_manifest(saved, config={**raw["config"], **change})
    started = time.monotonic()
    checks = validate_expert(saved)
    assert _codes(checks) == {"config-bounds"} and time.monotonic() - started < 10
    assert f"config.{next(iter(change))} = " in str(checks)


def test_the_bounds_are_the_presets_times_the_margin():
    widest = max((expert_config(p) for p in PRESET_NAMES), key=lambda c: c.hidden_size)
    assert ARCH_LIMITS["hidden_size"] == MARGIN * widest.hidden_size == 2304
    assert ARCH_LIMITS["depth"] == MARGIN * 28 and ARCH_LIMITS["text_dim"] == MARGIN * 768
    for preset in PRESET_NAMES:  # every preset validates, with room
        assert all(getattr(expert_config(preset), f) * MARGIN <= limit
                   for f, limit in ARCH_LIMITS.items() if f in ("hidden_size", "depth", "num_heads"))


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("adaln", ["single", "per-block"])
def test_parameter_count_by_formula_equals_the_built_models(preset, adaln):
    cfg = expert_config(preset, adaln=adaln)
    assert parameter_count(cfg) == meta_parameter_count(build_expert_model, cfg)
    for pool in ("mean", "cls"):
        r = router_config(preset, 7, adaln=adaln, pool=pool)
        assert parameter_count(r) == meta_parameter_count(build_router, r)
    assert stored_elements(cfg) == parameter_count(cfg) + cfg.num_patches * cfg.hidden_size  # + pos_embed


def test_a_config_whose_weights_would_exceed_the_size_limit_is_refused_by_formula(saved):
    raw = json.load(open(_manifest_path(saved)))  # within every bound, but 1.3 billion parameters
    big = expert_config("XL/2", depth=56, hidden_size=2048, num_heads=16)
    config = {**raw["config"], **{k: getattr(big, k) for k in ("depth", "hidden_size", "num_heads")}}
    _edit_manifest(saved, config=config, num_parameters=parameter_count(big.replace(**{
        k: raw["config"][k] for k in ("input_size", "in_channels", "text_dim", "preset")})))
    checks = validate_expert(saved, max_bytes=2 << 30)  # the file is 1 MB; the config needs 15 GB
    assert _codes(checks) == {"size-limit"} and "elements need 15181391408 bytes" in str(checks)


@pytest.mark.timeout(60)
def test_a_manifest_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    folder = tmp_path / "e"
    folder.mkdir()
    os.mkfifo(folder / "expert.json")
    checks = validate_expert(str(folder))
    assert _codes(checks) == {"manifest-unreadable"} and "not a regular file" in str(checks)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["fifo", "/dev/zero"])
def test_weights_that_are_not_a_regular_file_are_refused_without_blocking(saved, target):
    raw = json.load(open(_manifest_path(saved)))
    path = os.path.join(saved, raw["weights_file"])
    os.remove(path)
    os.mkfifo(path) if target == "fifo" else os.symlink(target, path)
    _edit_manifest(saved, weights_bytes=0)  # the size a FIFO or a device reports
    checks = validate_expert(saved)
    assert _codes(checks) == {"weights-unreadable"} and "not a regular file" in str(checks)


def test_each_validation_has_a_wall_clock_budget(saved):
    assert all(c.ok for c in validate_expert(saved, time_budget_s=60))
    checks = validate_expert(saved, time_budget_s=0)
    assert _codes(checks) == {"time-budget"} and "0 s budget" in str(checks)
