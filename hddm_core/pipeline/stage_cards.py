"""One summary card per stage result (hddm_core.pipeline.report_pictures.Card): the key numbers and the
stage's pictures inline, for a Prefect markdown artifact (the tasks layer creates it; no Prefect here).

Each takes the artifact store the stage wrote to and the StageRef it returned (a reused result too).
"""
from __future__ import annotations

import posixpath

from hddm_core.pipeline.report_pictures import MAX_CARD_BYTES, Card, location
from hddm_core.pipeline.reuse import StageRef
from hddm_core.storage import ArtifactStore

MAX_REPORT_BYTES = 1 << 20  # the cluster report.md is a table of K rows


def cluster_card(store: ArtifactStore, ref: StageRef, budget: int = MAX_CARD_BYTES) -> str:
    """The cluster report (sizes, agreement with the group labels) and the cluster grid."""
    card = Card(f"Clusters: {ref.prefix}", budget)
    report = f"{ref.prefix}/report.md"
    if store.exists(report):
        card.add(store.read_bytes(report, MAX_REPORT_BYTES).decode(errors="replace"), "")
    else:
        card.table([{"cluster": i, "size": n} for i, n in enumerate(ref.counts.get("sizes", []))])
    card.picture(store, f"{ref.prefix}/clusters.png", "cluster grid: sample images per cluster")
    return card.add(f"report: {location(store, report)}").text()


def expert_card(store: ArtifactStore, ref: StageRef, budget: int = MAX_CARD_BYTES) -> str:
    """A trained expert (or the monolith baseline): steps, samples, final loss and the loss curve."""
    x, c = ref.extra, ref.counts
    what = f"cluster {x['cluster_id']}" if ref.stage == "train-expert" else ref.stage
    card = Card(f"{ref.stage}: {what}, {x.get('objective')}", budget)
    row = {"objective": x.get("objective"), "steps": c.get("steps"), "samples": c.get("samples"),
           "final loss": c.get("final_loss"), "init": x.get("init"), "schedule": x.get("schedule")}
    if ref.stage == "train-expert":
        row = {"cluster": x.get("cluster_id"), **row}
    if "compute" in x:
        row["compute"] = x["compute"]
    card.table([row])
    if ref.reused:
        card.add("_reused: an identical earlier run's result_", "")
    card.picture(store, f"{ref.prefix}/loss_curve.png", "training loss")
    return card.add(f"weights: {location(store, posixpath.join(ref.prefix, 'expert.json'))}").text()


def router_card(store: ArtifactStore, ref: StageRef, budget: int = MAX_CARD_BYTES) -> str:
    """The router: accuracy per noise level, its evaluation plot and loss curve."""
    card = Card(f"Router: {ref.prefix}", budget)
    card.add(f"{ref.counts.get('steps')} steps on {ref.counts.get('samples')} samples; accuracy on training "
             "samples with fresh noise, per t bucket:", "")
    card.table([{"t bucket": k, "accuracy": v} for k, v in ref.counts.get("accuracy_by_t", {}).items()])
    card.pictures(store, [(f"{ref.prefix}/evaluation.png", "router accuracy and calibration over t"),
                          (f"{ref.prefix}/loss_curve.png", "router training loss")])
    return card.add(f"router: {location(store, posixpath.join(ref.prefix, 'router.json'))}").text()


def _picture_rank(rel: str) -> tuple:
    """Order of an evaluation's pictures: routing-mode sample grids, the quality plots, the rest."""
    if rel.startswith("grids/") and not rel.startswith("grids/expert_"):
        return (0, rel)
    if rel in ("plots/quality.png", "plots/threshold_sweep.png"):
        return (1, rel)
    return (2, rel)


def _picture_alt(rel: str) -> str:
    name = posixpath.splitext(rel)[0]
    if name.startswith("grids/expert_"):
        return f"samples of {name[len('grids/expert_'):]} alone"
    if name.startswith("grids/"):
        return f"samples: {name[len('grids/'):]}"
    return name.replace("plots/", "").replace("_", " ")


def evaluation_card(store: ArtifactStore, ref: StageRef, budget: int = MAX_CARD_BYTES) -> str:
    """Metrics per routing mode, then the sample grids and plots, as many as the budget allows."""
    c = ref.counts
    card = Card(f"Evaluation: {ref.prefix}", budget)
    card.add(f"{c.get('experts', '?')} expert(s), {c.get('samples_per_mode', '?')} samples per routing mode"
             + (f", latent space {c['latent_space']}" if c.get("latent_space") else "")
             + ("; reused: evaluated before with the same experts and config" if ref.reused else "") + ".", "")
    metrics = ref.extra.get("metrics") or c.get("metrics") or {}
    card.table([{"routing": mode, **values} for mode, values in metrics.items()])
    pngs = sorted((k[len(ref.prefix) + 1:] for k in store.list(ref.prefix) if k.endswith(".png")), key=_picture_rank)
    card.pictures(store, [(f"{ref.prefix}/{rel}", _picture_alt(rel)) for rel in pngs])
    return card.add(f"full report (markdown, every picture): {location(store, f'{ref.prefix}/report.md')}").text()
