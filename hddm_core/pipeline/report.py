"""Evaluation report: metrics.json, sample grids (PNG, prompts as captions), plots, report.md.

write_report(out, results) writes under `out` (an ArtifactStore, a local folder or a URL):
    metrics.json                  every variant's metrics (with names, status, reasons) and usage
    grids/<variant>.png           sample grids with prompt captions (images) or scatter plots (2-D data)
    plots/quality.png             quality metric (FID, or a named feature distance) per variant
    plots/threshold_sweep.png     quality vs diversity over tau, one curve per ordering
    plots/usage_<variant>.png     expert weight over t (stacked)
    report.md                     links all of the above
Variants compared in one report share seeds and prompts (recorded in metrics.json).
"""
from __future__ import annotations

import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hddm_core.metrics.result import MetricResult
from hddm_core.metrics.usage import usage_summary
from hddm_core.storage import ArtifactStore


SWEEP_GROUP = "threshold:"  # group of a threshold tau sweep: "threshold:<order>", one curve per order


def sweep_group(order: str) -> str:
    return f"{SWEEP_GROUP}{order}"


@dataclass
class VariantResult:
    name: str
    group: str  # "ensemble" | "routing" | sweep_group(order) | "native" | ...
    metrics: dict[str, MetricResult]
    ensemble: Any = None  # EnsembleResult (usage, entropy, safeguards), if the variant used the ensemble sampler
    samples: torch.Tensor | None = None  # [N, 3, H, W] in [-1, 1] or [N, d] vectors
    prompts: list[str] | None = None  # one per sample
    params: dict = field(default_factory=dict)


@dataclass
class EvaluationResults:
    title: str
    variants: list[VariantResult]
    quality: str  # metric name plotted as quality (lower is better), e.g. "FID"
    diversity: str  # metric name plotted as diversity (higher is more diverse)
    seeds: list[int]
    notes: list[str] = field(default_factory=list)
    paper_table: list[dict] = field(default_factory=list)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:80] or "variant"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _value(v: VariantResult, metric: str) -> float | None:
    m = v.metrics.get(metric)
    return m.value if m is not None and m.ok else None


def image_grid(images: torch.Tensor, captions: list[str] | None, columns: int = 8, caption_px: int = 28) -> bytes:
    """[N, 3, H, W] in [-1, 1] -> PNG bytes, each tile captioned (prompts wrapped to the tile width)."""
    from PIL import Image, ImageDraw, ImageFont

    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, _, h, w = x.shape
    scale = max(1, 96 // max(h, w))
    th, tw = h * scale, w * scale
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    canvas = Image.new("RGB", (cols * tw, rows * (th + caption_px)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    chars = max(4, tw // 6)
    for i in range(n):
        r, c = divmod(i, cols)
        tile = Image.fromarray(x[i].permute(1, 2, 0).numpy()).resize((tw, th), Image.NEAREST)
        canvas.paste(tile, (c * tw, r * (th + caption_px)))
        if captions:
            text = captions[i]
            lines = [text[j:j + chars] for j in range(0, min(len(text), 2 * chars), chars)]
            draw.multiline_text((c * tw + 2, r * (th + caption_px) + th + 1), "\n".join(lines), fill="black", font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def scatter_png(samples: torch.Tensor, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = samples.detach().double().cpu().numpy()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(s[:, 0], s[:, 1] if s.shape[1] > 1 else np.zeros(len(s)), s=2, alpha=0.5)
    ax.set_title(title, fontsize=8)
    return _png(fig)


def _quality_plot(results: EvaluationResults) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(v.name, _value(v, results.quality)) for v in results.variants if not v.group.startswith(SWEEP_GROUP)]
    rows = [(n, q) for n, q in rows if q is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(rows) + 2), 3.5))
    ax.bar(range(len(rows)), [q for _, q in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)), [n for n, _ in rows], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel(f"{results.quality} (lower is better)")
    ax.set_title(f"{results.quality} per variant")
    return _png(fig)


def _sweep_plot(results: EvaluationResults) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({v.group for v in results.variants if v.group.startswith(SWEEP_GROUP)})
    if not groups:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for g in groups:
        vs = sorted((v for v in results.variants if v.group == g), key=lambda v: v.params.get("tau", 0))
        taus = [v.params.get("tau") for v in vs]
        q = [_value(v, results.quality) for v in vs]
        d = [_value(v, results.diversity) for v in vs]
        label = g.split(":", 1)[-1]
        axes[0].plot(taus, [np.nan if x is None else x for x in q], "o-", label=label)
        axes[1].plot([np.nan if x is None else x for x in d], [np.nan if x is None else x for x in q], "o-", label=label)
        for t, x, y in zip(taus, d, q):
            if x is not None and y is not None:
                axes[1].annotate(f"{t:g}", (x, y), fontsize=7)
    axes[0].set_xlabel("threshold tau")
    axes[0].set_ylabel(results.quality)
    axes[1].set_xlabel(results.diversity)
    axes[1].set_ylabel(results.quality)
    axes[0].legend(fontsize=7)
    axes[1].set_title("quality vs diversity (labels: tau)", fontsize=9)
    return _png(fig)


def _usage_plot(v: VariantResult) -> bytes | None:
    if v.ensemble is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = v.ensemble
    t, u = e.times.numpy(), e.usage.numpy()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.stackplot(t, u.T, labels=e.expert_names)
    ax.set_xlim(1, 0)
    ax.set_xlabel("t (1 = noise -> 0 = data)")
    ax.set_ylabel("mean routing weight")
    ent = e.router_entropy.numpy()
    if not np.isnan(ent).all():
        ax2 = ax.twinx()
        ax2.plot(t, ent, "k--", lw=1, label="router entropy (nats)")
        ax2.set_ylabel("router entropy (nats)")
    ax.legend(fontsize=6, loc="upper left")
    ax.set_title(f"expert usage: {v.name}", fontsize=9)
    return _png(fig)


def _metrics_json(results: EvaluationResults) -> dict:
    out = {"title": results.title, "quality_metric": results.quality, "diversity_metric": results.diversity,
           "seeds": results.seeds, "notes": results.notes, "paper_table": results.paper_table, "variants": []}
    for v in results.variants:
        rec = {"name": v.name, "group": v.group, "params": v.params,
               "metrics": {k: m.as_dict() for k, m in v.metrics.items()}}
        if v.prompts is not None:
            rec["prompts"] = v.prompts
        if v.ensemble is not None:
            rec["usage"] = usage_summary(v.ensemble)
            rec["ensemble"] = v.ensemble.summary()
        out["variants"].append(rec)
    return out


def _fmt(m: MetricResult | None) -> str:
    if m is None:
        return "-"
    return f"{m.value:.4g}" if m.ok else f"{m.status}"


def write_report(out, results: EvaluationResults) -> str:
    """Write the whole report; returns the URI of report.md."""
    store = out if isinstance(out, ArtifactStore) else ArtifactStore(os.fspath(out))
    store.write_json("metrics.json", _metrics_json(results))
    md = [f"# {results.title}", "", f"Seeds: {len(results.seeds)} (identical for every variant). "
          f"Quality: **{results.quality}**; diversity: **{results.diversity}**.", ""]
    md += [f"- {n}" for n in results.notes] + ([""] if results.notes else [])
    names = sorted({k for v in results.variants for k in v.metrics})
    md += ["| variant | group | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for v in results.variants:
        md.append(f"| {v.name} | {v.group} | " + " | ".join(_fmt(v.metrics.get(k)) for k in names) + " |")
    reasons = {m.name: m.reason for v in results.variants for m in v.metrics.values() if not m.ok}
    if reasons:
        md += ["", "Metrics not computed:"] + [f"- {k}: {r}" for k, r in reasons.items()]
    if results.paper_table:
        md += ["", "## Beside the paper", "", "| comparison | paper | this run |", "|---|---|---|"]
        md += [f"| {r['comparison']} | {r['paper']} | {r['this_run']} |" for r in results.paper_table]
    md += ["", "## Plots", ""]
    for key, png in (("plots/quality.png", _quality_plot(results)), ("plots/threshold_sweep.png", _sweep_plot(results))):
        if png is not None:
            store.write_bytes(key, png)
            md.append(f"![{key}]({key})")
    md += ["", "## Samples and expert usage", ""]
    for v in results.variants:
        slug = _slug(v.name)
        if v.samples is not None:
            key = f"grids/{slug}.png"
            s = v.samples
            png = image_grid(s[:32], (v.prompts or [])[:32] or None) if s.ndim == 4 else scatter_png(s, v.name)
            store.write_bytes(key, png)
            md.append(f"- {v.name}: [samples]({key})")
        u = _usage_plot(v)
        if u is not None:
            store.write_bytes(f"plots/usage_{slug}.png", u)
            md.append(f"  - [expert usage over t](plots/usage_{slug}.png)")
    return store.write_bytes("report.md", ("\n".join(md) + "\n").encode())
