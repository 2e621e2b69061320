"""Cluster report: agreement of clusters with known groups, a picture, markdown and JSON.

Agreement (when samples carry a group label, e.g. the emoji's Unicode group): adjusted mutual
information (sklearn), purity (fraction of samples in their cluster's majority group), and the AMI
of the same cluster sizes under a random permutation of the labels as the chance reference.
"""
from __future__ import annotations

import io
from collections import Counter

import numpy as np


def agreement(labels, groups, seed: int = 0) -> dict:
    """AMI, NMI, ARI, purity and chance AMI of cluster labels against ground-truth groups."""
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

    labels, groups = np.asarray(labels), np.asarray(groups)
    if len(labels) != len(groups) or len(labels) == 0:
        raise ValueError(f"labels and groups must be non-empty and equally long, got {len(labels)} and {len(groups)}")
    majority = sum(Counter(groups[labels == c].tolist()).most_common(1)[0][1] for c in np.unique(labels))
    chance = adjusted_mutual_info_score(groups, np.random.default_rng(seed).permutation(labels))
    return {"ami": float(adjusted_mutual_info_score(groups, labels)),
            "nmi": float(normalized_mutual_info_score(groups, labels)),
            "ari": float(adjusted_rand_score(groups, labels)),
            "purity": float(majority / len(labels)),
            "chance_ami": float(chance),
            "majority_baseline_purity": float(Counter(groups.tolist()).most_common(1)[0][1] / len(labels)),
            "n_groups": int(len(np.unique(groups)))}


def cluster_composition(labels, groups, top: int = 3) -> dict[int, list[tuple[str, int]]]:
    labels, groups = np.asarray(labels), np.asarray(groups)
    return {int(c): Counter(groups[labels == c].tolist()).most_common(top) for c in np.unique(labels)}


def cluster_picture(thumbnails: dict[int, list], sizes: list[int], title: str = "") -> bytes:
    """PNG: cluster sizes as a bar chart above one row of sample thumbnails per cluster."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = len(sizes)
    cols = max([len(v) for v in thumbnails.values()] + [1])
    fig = plt.figure(figsize=(max(6, cols * 1.1 + 1), 2.5 + k * 1.1), dpi=100)
    grid = fig.add_gridspec(k + 1, cols, height_ratios=[2.2] + [1] * k)
    bars = fig.add_subplot(grid[0, :])
    bars.bar(range(k), sizes, color="tab:blue")
    bars.set_xticks(range(k))
    bars.set_xlabel("cluster")
    bars.set_ylabel("samples")
    bars.set_title(title or "cluster sizes and samples per cluster")
    for c in range(k):
        for j in range(cols):
            ax = fig.add_subplot(grid[c + 1, j])
            ax.axis("off")
            images = thumbnails.get(c, [])
            if j < len(images):
                ax.imshow(np.asarray(images[j].convert("RGB")))
            if j == 0:
                ax.set_title(f"cluster {c} (n={sizes[c]})", fontsize=7, loc="left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def report_markdown(report: dict) -> str:
    lines = [f"# Cluster report: {report['stage_prefix']}", "",
             f"- embeddings: {report['embedder']} ({report['n_samples']} samples, {report['dim']}-d)",
             f"- hierarchical k-means levels (bottom to top): {report['level_sizes']}; seed {report['seed']}; "
             f"balance: {report['balance']}", "",
             "| cluster | size | top groups |", "|---:|---:|---|"]
    composition = report.get("composition") or {}
    for c, size in enumerate(report["sizes"]):
        top = ", ".join(f"{g} ({n})" for g, n in composition.get(str(c), composition.get(c, [])))
        lines.append(f"| {c} | {size} | {top} |")
    quality = report.get("agreement")
    lines.append("")
    if quality:
        lines += [f"## Agreement with `{report['group_field']}` ({quality['n_groups']} groups)", "",
                  f"- adjusted mutual information: {quality['ami']:.3f} (chance, permuted labels: {quality['chance_ami']:.3f})",
                  f"- purity: {quality['purity']:.3f} (majority-group baseline: {quality['majority_baseline_purity']:.3f})",
                  f"- NMI {quality['nmi']:.3f}, ARI {quality['ari']:.3f}"]
    else:
        lines.append("No group labels were given, so agreement was not measured.")
    return "\n".join(lines) + "\n"
