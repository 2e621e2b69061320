"""How good is the router, as a function of noise: accuracy, calibration (ECE), NLL per t bucket,
confusion matrices, and one picture (accuracy / ECE vs t, confusion at the lowest noise).

ECE (Guo et al. 2017): bin predictions by confidence (max probability) into 15 equal bins;
ECE = sum_b (n_b / n) |accuracy_b - confidence_b|.
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch

from hddm_core.diffusion.schedules import get_schedule
from hddm_core.diffusion.time_inputs import network_time

ECE_BINS = 15


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf.double() > lo) & (conf.double() <= hi)
        if inside.any():
            ece += inside.double().mean().item() * abs(correct[inside].mean().item() - conf[inside].double().mean().item())
    return float(ece)


@torch.no_grad()
def evaluate_router(router: Callable, dataset, num_clusters: int, *, buckets: int = 10, per_bucket: int = 256,
                    path: str = "linear", time_input: str = "scaled-1000", batch_size: int = 64, seed: int = 0,
                    device: str = "cpu") -> dict:
    """Per-bucket metrics of router(x_t, net_t) -> logits on noisy samples of `dataset` (latent, label)."""
    gen = torch.Generator().manual_seed(seed)
    schedule = get_schedule(path)
    rows, confusion = [], np.zeros((buckets, num_clusters, num_clusters), np.int64)
    label_counts = np.zeros(num_clusters, np.int64)
    for b in range(buckets):
        lo, hi = b / buckets, (b + 1) / buckets
        idx = torch.randint(len(dataset), (per_bucket,), generator=gen).tolist()
        t_all = lo + (hi - lo) * torch.rand(per_bucket, generator=gen, dtype=torch.float64)
        probs, labels = [], []
        for start in range(0, per_bucket, batch_size):
            items = [dataset[i] for i in idx[start:start + batch_size]]
            x0 = torch.stack([it[0] for it in items]).float()
            y = torch.stack([torch.as_tensor(it[1]) for it in items]).long()
            t = t_all[start:start + batch_size]
            noise = torch.randn(x0.shape, generator=gen)
            c = schedule.coefficients(t)
            shape = (-1,) + (1,) * (x0.dim() - 1)
            x_t = c.alpha.float().view(shape) * x0 + c.sigma.float().view(shape) * noise  # the sampler's path
            logits = router(x_t.to(device), network_time(t, time_input).float().to(device))
            probs.append(torch.softmax(logits.float().cpu(), dim=1))
            labels.append(y)
        p, y = torch.cat(probs), torch.cat(labels)
        pred = p.argmax(1)
        np.add.at(confusion[b], (y.numpy(), pred.numpy()), 1)
        label_counts += np.bincount(y.numpy(), minlength=num_clusters)
        rows.append({"t_lo": lo, "t_hi": hi, "n": len(y), "accuracy": float((pred == y).double().mean()),
                     "ece": expected_calibration_error(p, y),
                     "nll": float(-torch.log(p[torch.arange(len(y)), y].clamp_min(1e-12)).mean())})
    freq = label_counts / max(label_counts.sum(), 1)
    return {"buckets": rows, "confusion_per_bucket": confusion.tolist(), "confusion_all": confusion.sum(0).tolist(),
            "chance_uniform": 1.0 / num_clusters, "chance_majority": float(freq.max()),
            "label_frequencies": freq.tolist(), "path": path, "time_input": time_input, "seed": seed}


def router_report_png(report: dict, title: str = "router") -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = report["buckets"]
    mid = [(r["t_lo"] + r["t_hi"]) / 2 for r in rows]
    fig, (ax, cx) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=90)
    ax.plot(mid, [r["accuracy"] for r in rows], "o-", label="accuracy")
    ax.plot(mid, [r["ece"] for r in rows], "s--", label="ECE (calibration error)")
    ax.axhline(report["chance_majority"], color="gray", ls=":", label="chance (majority cluster)")
    ax.set_xlabel("t (0 = data, 1 = noise)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}: accuracy and calibration vs noise")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    conf = np.asarray(report["confusion_per_bucket"][0], dtype=np.float64)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    im = cx.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    k = norm.shape[0]
    if k <= 12:
        for i in range(k):
            for j in range(k):
                cx.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    cx.set_xticks(range(k))
    cx.set_yticks(range(k))
    cx.set_xlabel("predicted cluster")
    cx.set_ylabel("true cluster")
    cx.set_title(f"confusion, t in [{rows[0]['t_lo']:.1f}, {rows[0]['t_hi']:.1f}] (row-normalised colour)")
    fig.colorbar(im, ax=cx, fraction=0.046)
    fig.subplots_adjust(left=0.06, right=0.97, bottom=0.13, top=0.9, wspace=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
