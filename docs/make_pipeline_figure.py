"""Draw docs/pipeline.png: the stages, the artifacts each writes, and where each runs.

    python docs/make_pipeline_figure.py [out.png]
"""
from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Rectangle  # noqa: E402

CPU, GPU, DASK, ANY = "#dbe9f6", "#fde2c8", "#e3f1dc", "#eeeeee"
# (label, artifacts under the artifact root, where it runs, colour, x, y)
STAGES = [
    ("download\n(img2dataset, guarded)", "download/shards/*.tar", "CPU pool", CPU, 0, 3),
    ("recaption\n(LLaVA | passthrough)", "recaption/captions/*", "GPU pool / Dask", DASK, 1, 3),
    ("embed\n(DINOv2 | Inception-FID)", "embed/embeddings/*", "GPU pool / Dask", DASK, 2, 3),
    ("cluster\n(hierarchical k-means)", "cluster/centroids.safetensors\nassignments, clusters.png", "CPU pool", CPU, 3, 3),
    ("prepare\n(latents + text tokens)", "prepare/cluster_<c>/, router/", "GPU pool", GPU, 4, 3),
    ("train expert x K\n(DDPM or FM, 1 GPU each)", "experts/runs/.../expert/\nsafetensors + expert.json", "GPU pool: one run per GPU", GPU, 1.5, 1.2),
    ("train router\n(p(cluster | x_t, t))", "router/run-*/router/", "GPU pool", GPU, 3.0, 1.2),
    ("register expert\n(validate, store, event)", "experts/registry/<name>/", "CPU pool", CPU, 3.0, -0.5),
    ("evaluate\n(ensemble sampling, metrics)", "evaluations/<key>/report.md\ngrids, plots", "CPU / GPU pool", CPU, 4.5, -0.5),
    ("contributor\n(own machine, no server)", "hddmp contrib fetch/assign/prepare\nexpert train/validate/submit", "anywhere", ANY, 1.5, -0.5),
]
EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (4, 6), (5, 7), (7, 8), (6, 8), (9, 7)]


def draw(out: str) -> str:
    fig, ax = plt.subplots(figsize=(15, 7.5))
    ax.set_xlim(-0.7, 5.3)
    ax.set_ylim(-1.4, 3.95)
    ax.axis("off")
    w, h = 0.92, 0.78
    for label, artifact, where, colour, x, y in STAGES:
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02", fc=colour, ec="#555"))
        ax.text(x, y + 0.17, label, ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x, y - 0.2, artifact, ha="center", va="center", fontsize=6.5, family="monospace", color="#333")
        ax.text(x, y - h / 2 - 0.1, where, ha="center", va="center", fontsize=7, style="italic", color="#444")
    for a, b in EDGES:
        (xa, ya), (xb, yb) = STAGES[a][4:6], STAGES[b][4:6]
        if abs(ya - yb) < 0.1:  # same row: right edge to left edge
            start, end = (xa + w / 2 * (1 if xb > xa else -1), ya), (xb - w / 2 * (1 if xb > xa else -1), yb)
        else:  # rows apart: bottom edge to top edge
            start, end = (xa, ya - h / 2 - 0.18), (xb, yb + h / 2)
        ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", color="#666", lw=1.2))
    ax.text(-0.6, 3.75, "HDDM pipeline: stages, artifacts (one root URL: local folder or s3://...), where each runs",
            fontsize=12, weight="bold")
    ax.text(-0.6, -1.3, "Every stage: hddmp CLI in-process (hddm_core.pipeline.stages) or a Prefect deployment (prefect.yaml). "
            "Stages exchange URIs and manifests only; an expert landing emits hddm.expert.landed -> evaluate.",
            fontsize=8.5, color="#333")
    for i, (name, colour) in enumerate([("CPU work pool", CPU), ("GPU work pool (process / Kubernetes)", GPU),
                                        ("GPU pool or Dask cluster", DASK), ("contributor's machine", ANY)]):
        ax.add_patch(Rectangle((-0.6 + i * 1.45, 3.47), 0.1, 0.12, fc=colour, ec="#555"))
        ax.text(-0.45 + i * 1.45, 3.53, name, fontsize=8.5, va="center")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(draw(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "pipeline.png")))
