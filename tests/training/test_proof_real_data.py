"""Proof on real data: real emoji (OpenMoji, two Unicode groups = two clusters), real captions
(MiniLM token embeddings), the real DiT expert and router (tiny-16 presets), the real trainers,
export, loading and sampling paths.

Claims checked (figures printed with -s):
- a DDPM (eps) expert on cluster 0 and a flow-matching (velocity) expert on cluster 1 each bring
  their training loss well below its start: mean of the last 30 steps <= 0.5 x mean of the first 10;
- samples of each exported expert (loaded back, converted to velocities on the linear path,
  25 Euler steps) are closer to their own cluster than to the other one. Feature distance: the
  RMS pixel distance of each sample, clipped to the pixel range [-1, 1] as writing an image does,
  to each cluster's mean image, averaged over 16 samples. (Unclipped, the 200-step DDPM expert's
  samples carry a few pixels at the +-20 x0 clamp: its eps error is amplified 1/alpha at high
  noise on the linear path, the instability the paper reports for DDPM->velocity at t > 0.5.);
- the router's accuracy at low noise (t in [0, 0.2]) beats chance (the majority cluster's share,
  0.62 here) by at least 0.25.
"""
import math

import pytest
import torch

from hddm_core.checkpoints import load_expert, load_router, velocity_expert_from_loaded
from hddm_core.diffusion.sampling import euler_sample, per_sample_noise, time_grid
from hddm_core.training.config import ExpertTrainConfig, RouterTrainConfig
from hddm_core.training.expert_trainer import train_expert
from hddm_core.training.router_trainer import train_router
from tests.training.emoji_clusters import (GROUPS, SIZE, ClusterTensors, RouterTensors, encode_captions,
                                           render_clusters)

pytestmark = pytest.mark.slow
STEPS = 200
N_SAMPLES = 16


@pytest.fixture(scope="module", autouse=True)
def _all_threads():
    """This module proves learning, not bit-identity: use every core (overrides the 1-thread fixture)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads(), __import__("os").cpu_count() or 1)))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clusters():
    rendered = render_clusters()
    names = rendered[0][1] + rendered[1][1]
    tokens, mask, describe = encode_captions(names)
    n0 = len(rendered[0][1])
    datasets = {0: ClusterTensors(rendered[0][0], tokens[:n0], mask[:n0]),
                1: ClusterTensors(rendered[1][0], tokens[n0:], mask[n0:])}
    return rendered, datasets, describe


@pytest.fixture(scope="module")
def experts(clusters, tmp_path_factory):
    _, datasets, describe = clusters
    out = {}
    for cluster, objective in ((0, "ddpm-eps"), (1, "flow-matching")):
        cfg = ExpertTrainConfig(architecture="tiny-16", latent_space="pixel", latent_channels=3, latent_size=SIZE,
                                text_encoder=describe["encoder"], text_dim=384, cluster_id=cluster,
                                objective=objective, steps=STEPS, batch_size=32, lr=2e-3, warmup_steps=20,
                                ema_decay=0.99, checkpoint_interval=STEPS // 2, caption_dropout=0.1, seed=cluster,
                                progress=False)
        out[cluster] = train_expert(cfg, datasets[cluster], str(tmp_path_factory.mktemp(f"expert{cluster}")))
    return out


@pytest.mark.parametrize("cluster", [0, 1])
def test_expert_loss_falls_well_below_start(experts, cluster):
    losses = experts[cluster].train.losses
    first, last = sum(losses[:10]) / 10, sum(losses[-30:]) / 30
    print(f"\n[proof] {GROUPS[cluster]} expert ({experts[cluster].loop.extra_meta['objective']}): "
          f"loss first-10 mean {first:.3f} -> last-30 mean {last:.3f} (ratio {last / first:.2f})")
    assert experts[cluster].train.status == "completed" and all(map(math.isfinite, losses))
    assert last <= 0.5 * first


@pytest.mark.parametrize("cluster", [0, 1])
def test_samples_are_closer_to_own_cluster(experts, clusters, cluster):
    rendered, datasets, _ = clusters
    loaded = load_expert(experts[cluster].expert_uri)
    assert loaded.manifest.cluster_id == cluster
    assert loaded.manifest.prediction == ("eps" if cluster == 0 else "velocity")
    field = velocity_expert_from_loaded(loaded)
    ds = datasets[cluster]
    cond = {"tokens": ds.tokens[:N_SAMPLES], "mask": ds.mask[:N_SAMPLES]}  # own captions
    noise = per_sample_noise(range(N_SAMPLES), (3, SIZE, SIZE))
    with torch.no_grad():
        samples = euler_sample(field, noise, time_grid(25), cond)
    assert torch.isfinite(samples).all()
    samples = samples.clamp(-1, 1)  # to the image range
    means = {c: rendered[c][0].mean(0) for c in rendered}
    dist = {c: float(((samples - means[c]) ** 2).flatten(1).mean(1).sqrt().mean()) for c in means}
    other = 1 - cluster
    print(f"\n[proof] samples of the {GROUPS[cluster]} expert: RMS pixel distance to own cluster mean "
          f"{dist[cluster]:.3f}, to {GROUPS[other]} mean {dist[other]:.3f}")
    assert dist[cluster] < dist[other]


def test_router_beats_chance_at_low_noise(clusters, tmp_path):
    rendered, _, _ = clusters
    data = RouterTensors({c: rendered[c][0] for c in rendered})
    cfg = RouterTrainConfig(architecture="tiny-16", num_clusters=2, latent_space="pixel", latent_channels=3,
                            latent_size=SIZE, steps=150, batch_size=32, lr=2e-3, warmup_steps=10, ema_decay=0.95,
                            checkpoint_interval=75, eval_buckets=5, eval_samples_per_bucket=128, progress=False)
    result = train_router(cfg, data, str(tmp_path / "router"))
    report = result.report
    low = report["buckets"][0]
    chance = report["chance_majority"]
    print("\n[proof] router accuracy per t bucket: " + ", ".join(
        f"[{b['t_lo']:.1f},{b['t_hi']:.1f}] {b['accuracy']:.2f} (ECE {b['ece']:.2f})" for b in report["buckets"])
        + f"; chance (majority) {chance:.2f}")
    assert low["accuracy"] >= chance + 0.25
    loaded = load_router(result.router_uri)
    assert loaded.manifest.num_clusters == 2 and loaded.manifest.time_input == "scaled-1000"
    store = result.loop.store
    assert store.exists("router/evaluation.png") and store.exists("router/evaluation.json")
