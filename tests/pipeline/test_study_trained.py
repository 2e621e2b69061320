"""The trained study's machinery on a synthetic measurement (no training): closed-form FD intervals,
direction labels, and a results page that states both scales and compositions beside the paper."""
import numpy as np
import pytest
import torch

from hddm_core.diffusion.objectives import DDPM_EPS, FLOW_MATCHING
from hddm_core.pipeline.confidence import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, bootstrap_draws
from hddm_core.pipeline.study_measure import Measurements, PromptSet, Variant
from hddm_core.pipeline.study_results import comparisons, write_results
from hddm_core.pipeline.study_trained import ComparisonSet, TrainedStudyConfig

D, REPS = 16, 4
TAUS = (0.2, 0.3, 0.4, 0.5)


def _white(n: int, seed: int) -> np.ndarray:
    """n x D features with mean exactly 0 and sample covariance exactly I (np.cov, ddof 1)."""
    x = np.random.default_rng(seed).normal(size=(n, D))
    x -= x.mean(0)
    c = np.cov(x, rowvar=False)
    return x @ np.linalg.inv(np.linalg.cholesky(c)).T


def _set(n_prompts):
    return PromptSet([f"prompt {i}" for i in range(n_prompts)], {}, {}, list(range(n_prompts * REPS)),
                     (np.zeros(D), np.eye(D)), None, None, None)


def _measurements(shifts: dict, div: dict) -> Measurements:
    n = {"ensemble": 12, "pair": 8}
    variants = {}
    for i, (name, (group, shift)) in enumerate(shifts.items()):
        f = _white(n[group] * REPS, i) + shift
        variants[name] = Variant(name, group, f, [div.get(name, 1.0)] * n[group], torch.zeros(n[group] * REPS, 3, 4, 4),
                                 {"tau": float(name.rsplit("=", 1)[1])} if "tau=" in name else {})
    ts = [round(0.05 + 0.1 * i, 2) for i in range(10)]
    eps = [[0.01 * (1 + 50 * t * t)] * 20 for t in ts]  # eps expert: x0 error grows with noise
    fm = [[0.2] * 20 for _ in ts]
    sets = {"ensemble": _set(n["ensemble"]), "pair": _set(n["pair"])}
    return Measurements(variants, sets, {g: bootstrap_draws(len(s.captions), 200) for g, s in sets.items()},
                        "pixel-RMS diversity", {"t": ts, "cluster0-ddpm": eps, "cluster0-fm": fm}, REPS, D)


@pytest.fixture
def study():
    cfg = TrainedStudyConfig(clusters=4, taus=TAUS, bootstrap=200)
    cs = ComparisonSet(["e0", "e1", "e2", "e3"], ["h0", "h1", "h2", "h3"], "mono", "router",
                       [DDPM_EPS, FLOW_MATCHING, FLOW_MATCHING, FLOW_MATCHING], "prepare", 12.0)
    shifts = {"heterogeneous top-2": ("ensemble", 0.0), "homogeneous top-2": ("ensemble", 1.0),
              "homogeneous full": ("ensemble", 1.0), "monolith": ("ensemble", 0.5),
              "cluster0 DDPM converted to velocity": ("pair", 0.5), "cluster0 DDPM native DDIM": ("pair", 0.0)}
    for order, s in (("FM-first", 0.25), ("DDPM-first", 0.75)):
        for t in TAUS:
            shifts[f"threshold {order} tau={t:g}"] = ("pair", s)
    div = {"heterogeneous top-2": 0.9, "homogeneous top-2": 1.0}
    return cfg, cs, _measurements(shifts, div)


def test_fd_interval_matches_the_closed_form(study):
    """Features with mean c*1 and covariance exactly I against N(0, I): FD = D c^2 on the full sample."""
    _, _, m = study
    assert m.interval("homogeneous top-2", "fd").value == pytest.approx(D * 1.0, rel=1e-9)
    assert m.interval("monolith", "fd").value == pytest.approx(D * 0.25, rel=1e-9)
    assert m.interval("heterogeneous top-2", "fd").value == pytest.approx(0.0, abs=1e-7)


def test_directions_follow_the_intervals(study):
    cfg, cs, m = study
    rows = {r["comparison"]: r for r in comparisons(m, cfg, cs)}
    assert rows["heterogeneous vs homogeneous: quality"]["label"] == REPRODUCED
    assert rows["heterogeneous vs homogeneous: diversity"]["label"] == NOT_REPRODUCED  # 0.9 vs 1.0, no spread
    assert rows["Top-2 vs Full"]["label"] == INCONCLUSIVE  # identical features: the difference is exactly 0
    assert rows["Top-2 vs monolith"]["label"] == NOT_REPRODUCED
    assert rows["FM-first vs DDPM-first (mean over the tau sweep)"]["label"] == REPRODUCED
    assert rows["DDPM converted to velocity (all t) vs native DDIM"]["label"] == REPRODUCED
    x0 = [r for c, r in rows.items() if c.startswith("x0 error")]
    assert [r["label"] for r in x0] == [REPRODUCED, REPRODUCED]  # eps better at low t, velocity at high t


def test_results_page_states_both_scales_and_compositions(study, tmp_path):
    cfg, cs, m = study
    path = write_results(str(tmp_path), cfg, cs, m, command="hddmp study --test", wall_seconds=90.0)
    md = open(path).read()
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and ("FID" in ln or "LPIPS" in ln)]
    assert table, md
    for line in table:  # every row with a paper number names the paper's scale and composition and ours
        assert ("DiT-XL/2" in line or "DiT-B/2" in line) and "tiny DiT" in line and "K = 4" in line, line
    assert "2 DDPM + 6 FM vs 8 FM" in md and "1 DDPM + 3 FM vs 4 FM" in md
    assert "hddmp study --test" in md and "Wall time 1.5 min" in md and "seeds 0..47" in md
    assert "Sized down" in md and "--latent-space sd-vae" in md and "--closed-form" in md
    for f in ("results/fd_variants.png", "results/threshold_sweep.png", "results/x0_error.png",
              "results/grids/monolith.png"):
        assert f in md and (tmp_path / f).exists(), f


def test_baseline_stages_share_the_train_expert_runs():
    """The homogeneous baseline's FM experts have the train-expert config of the heterogeneous run's FM
    experts (so the stage reuses them); the monolith is flow matching with its own run folder."""
    from hddm_core.pipeline import reuse, stages
    from hddm_core.pipeline.baselines import HOMOGENEOUS, MONOLITH
    from hddm_core.pipeline.params import TrainHomogeneousParams, TrainMonolithParams

    assert stages.STAGES[MONOLITH].__name__ == "run_train_monolith"
    assert stages.STAGES[HOMOGENEOUS].__name__ == "run_train_homogeneous"
    p = TrainedStudyConfig(expert_steps=7).pipeline_params()
    homo = TrainHomogeneousParams(artifact_root=p.artifact_root, training=p.expert_training)
    assert p.expert_params(1).objective == FLOW_MATCHING and p.expert_params(0).objective == DDPM_EPS
    assert reuse._config_of(homo.expert_params(1)) == reuse._config_of(p.expert_params(1))
    assert reuse._config_of(homo.expert_params(0)) != reuse._config_of(p.expert_params(0))
    mono = TrainMonolithParams(training=p.expert_training)
    assert mono.objective == FLOW_MATCHING
    assert reuse.ref_prefix(MONOLITH, mono, "abcdef0123456789") == "experts/runs/monolith-flow-matching-abcdef0123"
    assert reuse.ref_prefix(HOMOGENEOUS, homo, "k") == "baselines/homogeneous"


def test_config_refuses_bad_sizes():
    with pytest.raises(ValueError, match="clusters must be >= 2.*got 1"):
        TrainedStudyConfig(clusters=1)
    with pytest.raises(ValueError, match="images_per_prompt must be >= 2"):
        TrainedStudyConfig(images_per_prompt=1)
    with pytest.raises(ValueError, match=r"taus must lie in \(0, 1\)"):
        TrainedStudyConfig(taus=(0.0, 0.5))
