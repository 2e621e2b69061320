"""The paper's baselines as pipeline stages (HDDM sec. 4): a monolith and a homogeneous ensemble.

- train-monolith: one model on the union of every cluster, with the K experts' total compute: K x
  training.steps at the same batch size (each expert trains training.steps on its cluster alone).
  It opens through reuse.open_stage and trains through stages.train_expert_on, the train-expert body.
- train-homogeneous: one expert per cluster, all with one objective (flow matching: the paper's
  "8 FM"), each through run_train_expert, so an identical expert of the heterogeneous run (same
  cluster, objective and config) is reused rather than retrained; a stage manifest lists the K experts.

The DDPM/FM pair on one cluster that the ordering, threshold and conversion comparisons need is the
heterogeneous run's DDPM expert and the homogeneous ensemble's FM expert on the same cluster.
"""
from __future__ import annotations

import logging

from hddm_core.manifests import StageManifest, describe_outputs, hash_config, write_manifest
from hddm_core.pipeline.params import TrainHomogeneousParams, TrainMonolithParams
from hddm_core.pipeline.reuse import Progress, StageRef, open_stage, ref_from_manifest

log = logging.getLogger(__name__)
MONOLITH, HOMOGENEOUS = "train-monolith", "train-homogeneous"
EXPERTS_FILE = "experts.json"


def all_clusters_dataset(store, prepare_prefix: str):
    """Every cluster's samples as one dataset (the monolith's training data): (dataset, K)."""
    from torch.utils.data import ConcatDataset

    from hddm_core.data.cluster_data import ClusterDataset, training_inputs_info

    k = int(training_inputs_info(store, prepare_prefix)["n_clusters"])
    parts = [ClusterDataset(store, prepare_prefix, c) for c in range(k)]
    return ConcatDataset([p for p in parts if len(p) > 0]), k


def run_train_monolith(params: TrainMonolithParams, progress: Progress = None) -> StageRef:
    """One model on all clusters for K x training.steps (the ensemble's total compute)."""
    from hddm_core.pipeline.stages import train_expert_on

    st = open_stage(MONOLITH, params)
    if st.reused:
        return st.reused
    dataset, k = all_clusters_dataset(st.store, params.prepare_prefix)
    training = params.training.model_copy(update={"steps": k * params.training.steps})
    log.info("monolith: %d samples from %d clusters, %d steps (= %d experts x %d)", len(dataset), k,
             training.steps, k, params.training.steps)
    return train_expert_on(st, params, dataset, progress, stage=MONOLITH, training=training,
                           extra={"clusters": k, "compute": f"{k} x {params.training.steps} steps"})


def run_train_homogeneous(params: TrainHomogeneousParams, progress: Progress = None) -> StageRef:
    """K experts of one objective, one per cluster; the manifest lists them (uri, hash, cluster)."""
    from hddm_core.pipeline.stages import n_clusters, run_train_expert

    st = open_stage(HOMOGENEOUS, params)
    if st.reused:
        return st.reused
    k = n_clusters(params, params.prepare_prefix)
    refs = []
    for c in range(k):
        refs.append(run_train_expert(params.expert_params(c)))
        if progress is not None:
            progress(c + 1, k)
    experts = [{"cluster_id": c, "uri": r.uri, "weights_sha256": r.content_hash, "objective": params.objective}
               for c, r in enumerate(refs)]
    st.store.write_json(f"{params.prefix}/{EXPERTS_FILE}", {"experts": experts})
    cfg = params.model_dump(mode="json", exclude={"artifact_root", "force"})
    manifest = StageManifest(stage=HOMOGENEOUS, config=cfg, config_hash=hash_config(cfg),
                             inputs={f"expert-cluster-{c}": r.content_hash for c, r in enumerate(refs)},
                             outputs=describe_outputs(st.store, params.prefix, [EXPERTS_FILE]),
                             counts={"experts": k, "objective": params.objective})
    write_manifest(st.store, params.prefix, manifest)
    ref = ref_from_manifest(st.store, HOMOGENEOUS, params.prefix, manifest, experts=[e["uri"] for e in experts])
    return st.remember(ref)


def homogeneous_experts(ref: StageRef) -> list[str]:
    """The expert folders a train-homogeneous ref lists, in cluster order."""
    return list(ref.extra["experts"])
