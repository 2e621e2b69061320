"""Pictures written with checkpoints: the loss curve (raw and smoothed), PNG bytes via matplotlib Agg."""
from __future__ import annotations

import io

import numpy as np


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (same length; the first points average what exists)."""
    if len(values) == 0:
        return values
    c = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def loss_curve_png(losses, title: str, rollbacks: list[int] | None = None) -> bytes:
    plt = _figure()
    losses = np.asarray(losses, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=80)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.13, top=0.9)  # fixed: tight_layout costs ~0.1 s
    steps = np.arange(1, len(losses) + 1)
    if len(losses):
        ax.plot(steps, losses, lw=0.6, alpha=0.35, label="loss (per step)")
        ax.plot(steps, smooth(losses, max(1, len(losses) // 50)), lw=1.8, label="moving average")
        if losses.min() > 0 and losses.max() / max(losses.min(), 1e-12) > 30:
            ax.set_yscale("log")
    for i, step in enumerate(rollbacks or []):
        ax.axvline(step, color="red", lw=0.8, ls="--", label="rollback (batch skipped)" if i == 0 else None)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(losses) or rollbacks:
        ax.legend(loc="upper right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
