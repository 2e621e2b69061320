"""Router trainer: noisy latents on the sampler's path, cross-entropy, resumable like the experts;
evaluation per t bucket (accuracy, ECE, NLL, confusion) and a self-describing save."""
import pytest
import torch
from torch import nn

from hddm_core.checkpoints import load_router
from hddm_core.training.config import RouterTrainConfig
from hddm_core.training.router_eval import evaluate_router, expected_calibration_error
from hddm_core.training.router_trainer import build_router_loop, train_router
from tests.training.tiny import loop_hash


class TwoBlobs(torch.utils.data.Dataset):
    """Cluster 0: images around -0.6, cluster 1: around +0.6 (3 x 16 x 16), 3:1 imbalance."""

    def __init__(self, n=48):
        g = torch.Generator().manual_seed(0)
        self.labels = (torch.arange(n) % 4 == 0).long()
        self.x = 0.25 * torch.randn(n, 3, 16, 16, generator=g) + (self.labels.float() * 1.2 - 0.6).view(-1, 1, 1, 1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.labels[i]


class ConvRouter(nn.Module):
    def __init__(self, k=2):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.t = nn.Linear(1, 8)
        self.head = nn.Linear(8, k)

    def forward(self, x, t_net):
        return self.head(self.net(x) + self.t(t_net[:, None] / 1000))


def cfg(**kw):
    return RouterTrainConfig(**{**dict(num_clusters=2, latent_channels=3, latent_size=16, steps=10, batch_size=8,
                                       lr=1e-2, ema_decay=0.5, checkpoint_interval=3, progress=False, loss_plot=False,
                                       eval_buckets=4, eval_samples_per_bucket=32), **kw})


def test_router_resume_is_bit_identical(tmp_path):
    full = build_router_loop(cfg(), TwoBlobs(), str(tmp_path / "a"), model_factory=lambda c: ConvRouter())
    full.run()
    part = build_router_loop(cfg(), TwoBlobs(), str(tmp_path / "b"), model_factory=lambda c: ConvRouter())
    part.run(until_step=4)
    resumed = build_router_loop(cfg(), TwoBlobs(), str(tmp_path / "b"), model_factory=lambda c: ConvRouter())
    assert resumed.resume() and resumed.step == 4
    resumed.run()
    assert loop_hash(resumed) == loop_hash(full)
    assert full.losses[-1] < full.losses[0]


def test_real_router_saved_self_describing_with_report(tmp_path):
    result = train_router(cfg(architecture="tiny-16", steps=6, checkpoint_interval=6), TwoBlobs(), str(tmp_path / "r"))
    report = result.report
    assert [b["t_lo"] for b in report["buckets"]] == [0.0, 0.25, 0.5, 0.75]
    assert sum(map(sum, report["confusion_all"])) == 4 * 32
    assert report["chance_majority"] > 0.5  # the 3:1 imbalance is what chance means here
    loaded = load_router(result.router_uri)
    assert loaded.manifest.schedule == "linear" and loaded.manifest.num_clusters == 2
    assert loaded.manifest.extra["training"]["weights"] == "ema"
    for name in ("evaluation.json", "evaluation.png", "train_config.json", "loss_curve.png"):
        assert result.loop.store.exists(f"router/{name}")


def test_label_out_of_range_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"label 1 outside 0..0|num_clusters must be"):
        build_router_loop(cfg(num_clusters=1), TwoBlobs(), str(tmp_path))


def test_ece_closed_forms():
    labels = torch.tensor([0, 1, 1, 0])
    onehot = torch.nn.functional.one_hot(labels, 2).float()
    assert expected_calibration_error(onehot, labels) == 0.0
    probs = torch.tensor([[0.9, 0.1]] * 10)  # 90 % confident, right 9 times out of 10: calibrated
    assert expected_calibration_error(probs, torch.tensor([0] * 9 + [1])) == pytest.approx(0.0, abs=1e-6)
    assert expected_calibration_error(probs, torch.tensor([0] * 10)) == pytest.approx(0.1)


def test_oracle_router_accuracy_vs_t():
    """An oracle that reads the sign of the mean: perfect at t = 0, worse as t -> 1."""
    data = TwoBlobs(n=400)

    def oracle(x, t_net):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m], 1) * 50

    rep = evaluate_router(oracle, data, 2, buckets=5, per_bucket=200)
    acc = [b["accuracy"] for b in rep["buckets"]]
    assert acc[0] == 1.0 and acc[-1] < 0.95  # [0.8, 1]: alpha <= 0.2, the signal drowns
