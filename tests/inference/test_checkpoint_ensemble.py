"""Ensembles from real self-describing checkpoints (tiny DiT experts and router, hddm_core.checkpoints)."""
import pytest
import torch

from hddm_core.checkpoints import save_expert, save_router
from hddm_core.inference import Routing, sample_ensemble
from hddm_core.inference.loading import load_ensemble
from hddm_core.models import build_expert_model, build_router, expert_config, router_config

COMMON = {"data_hash": "test", "latent_space": "pixel", "text_encoder": "all-MiniLM-L6-v2"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    for k, objective in enumerate(["ddpm-eps", "flow-matching"]):
        save_expert(str(root), f"e{k}", build_expert_model(expert_config("tiny-16")),
                    {**COMMON, "objective": objective, "cluster_id": k})
    save_router(str(root), "router", build_router(router_config("tiny-16", 2)),
                {"data_hash": "test", "latent_space": "pixel"})
    return root


def test_heterogeneous_checkpoints_sample_with_guidance(checkpoints):
    ens = load_ensemble([str(checkpoints / "e1"), str(checkpoints / "e0")], str(checkpoints / "router"))
    # Ordered by the router's cluster_ids, whatever order the paths came in.
    assert [m.manifest["cluster_id"] for m in ens.members] == [0, 1]
    assert [m.declaration.prediction for m in ens.members] == ["eps", "velocity"]
    assert ens.router_time_input == ens.router_manifest.time_input
    assert all(m.network is None for m in ens.members)  # lazy until selected
    cond = torch.randn(3, 4, 384)
    res = sample_ensemble(ens.members, [1, 2, 3], (3, 16, 16), router=ens.router,
                          router_time_input=ens.router_time_input, routing=Routing.full(), cond=cond, steps=2)
    assert res.samples.shape == (3, 3, 16, 16) and torch.isfinite(res.samples).all()
    # Guidance with each expert's own learned null caption: 2 rows per sample per expert per step.
    assert res.counts.expert_rows == [12, 12]
    assert sorted(e for e in res.pool_events if e[1] == "load") == [(m.name, "load") for m in ens.members]


def test_mismatched_text_encoder_is_refused(checkpoints, tmp_path):
    save_expert(str(tmp_path), "other", build_expert_model(expert_config("tiny-16")),
                {**COMMON, "text_encoder": "clip-vit-l-14", "objective": "flow-matching", "cluster_id": 1})
    ens = load_ensemble([str(checkpoints / "e0"), str(tmp_path / "other")])
    with pytest.raises(ValueError, match="text_encoder.*clip-vit-l-14"):
        sample_ensemble(ens.members, [0], (3, 16, 16), routing=Routing.fixed([1, 1]), steps=1)


def test_router_clusters_must_match_experts(checkpoints):
    with pytest.raises(ValueError, match=r"no expert for \[1\]"):
        load_ensemble([str(checkpoints / "e0")], str(checkpoints / "router"))
