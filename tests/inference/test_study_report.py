"""The study on ideal Gaussian-mixture experts, and the report it writes (small and fast)."""
import json

import pytest
import torch
from PIL import Image

from hddm_core.pipeline.report import EvaluationResults, VariantResult, image_grid, write_report
from hddm_core.metrics.result import MetricResult
from hddm_core.pipeline.study import gaussian_study_inputs, run_study


@pytest.mark.slow  # over 10 s
def test_study_runs_every_comparison_and_writes_a_report(tmp_path, capsys):
    res = run_study(gaussian_study_inputs(reference_n=4000), range(48), steps=12, taus=(0.2, 0.6))
    names = [v.name for v in res.variants]
    assert {"homogeneous (all FM) top-2", "heterogeneous (DDPM+FM) top-2", "heterogeneous top-1",
            "heterogeneous full", "monolith"} <= set(names)
    assert sum(v.group.startswith("threshold") for v in res.variants) == 4
    assert any("native DDIM" in n for n in names) and any("converted" in n for n in names)
    # Identical seeds across variants; full and the monolith agree (exact posterior router).
    full = next(v for v in res.variants if v.name == "heterogeneous full")
    mono = next(v for v in res.variants if v.name == "monolith")
    assert full.metrics["FD-data"].value < 0.5 and mono.metrics["FD-data"].value < 0.5
    assert next(v for v in res.variants if v.name == "heterogeneous top-1").metrics["mass error"].value > 0.15
    out = capsys.readouterr().out
    assert "11.88" in out and "22.60" in out and "not comparable" in out
    uri = write_report(str(tmp_path), res)
    assert uri.endswith("report.md")
    md = (tmp_path / "report.md").read_text()
    for link in ("plots/quality.png", "plots/threshold_sweep.png", "grids/heterogeneous-full.png",
                 "plots/usage_heterogeneous-full.png"):
        assert link in md and (tmp_path / link).exists(), link
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["seeds"] == list(range(48)) and len(data["variants"]) == len(res.variants)
    hetero = next(v for v in data["variants"] if v["name"] == "heterogeneous full")
    assert abs(sum(hetero["usage"]["mean_weight"].values()) - 1) < 1e-6


def test_image_grid_and_unavailable_metrics_in_report(tmp_path):
    imgs = torch.rand(3, 3, 16, 16) * 2 - 1
    png = image_grid(imgs, ["a red apple", "a cat", "a very long prompt " * 5], columns=2)
    (tmp_path / "g.png").write_bytes(png)
    with Image.open(tmp_path / "g.png") as im:
        assert im.size[0] == 2 * 96 and im.size[1] > 2 * 96
    v = VariantResult("v", "routing", {"LPIPS-alex diversity": MetricResult.unavailable("LPIPS-alex diversity", "no AlexNet"),
                                       "FID": MetricResult.refused("FID", "needs at least 2049 samples")},
                      samples=imgs, prompts=["a", "b", "c"])
    write_report(str(tmp_path / "r"), EvaluationResults("t", [v], "FID", "LPIPS-alex diversity", [0, 1, 2]))
    md = (tmp_path / "r" / "report.md").read_text()
    assert "unavailable" in md and "no AlexNet" in md and "2049" in md and (tmp_path / "r" / "grids" / "v.png").exists()
