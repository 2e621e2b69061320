"""The paper's comparisons on trained experts (`hddmp study`): train the comparison set, measure, publish.

The comparison set, all on one prepared run of the embedded data (pipeline stages, each reused when
finished): a heterogeneous ensemble (cluster 0 DDPM-eps, the others flow matching: the paper's
1 DDPM : 3 FM ratio at K = 4), the homogeneous all-FM baseline (train-homogeneous, sharing the FM
experts), the monolith (train-monolith, K x the per-expert steps) and a router. The DDPM/FM pair on
cluster 0 is the heterogeneous run's DDPM expert and the homogeneous run's FM expert.
Measurement: hddm_core.pipeline.study_measure; the published page: hddm_core.pipeline.study_results.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

from hddm_core.diffusion.objectives import DDPM_EPS, FLOW_MATCHING
from hddm_core.models.presets import TINY, TINY_16

log = logging.getLogger(__name__)


@dataclass
class TrainedStudyConfig:
    artifact_root: str = "artifacts/study-trained"
    clusters: int = 4
    expert_steps: int = 1000  # per expert; the monolith trains clusters x expert_steps
    router_steps: int = 400
    emoji: int = 256  # embedded dataset size
    resolution: int = 16
    prompts_per_cluster: int = 4  # all-cluster comparisons: clusters x this prompts
    pair_prompts: int = 12  # the same-cluster pair's comparisons (cluster 0 prompts)
    images_per_prompt: int = 4
    sample_steps: int = 30
    cfg_scale: float = 1.5
    fd_dims: int = 16
    reference_images: int = 64
    taus: tuple = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    bootstrap: int = 1000
    seed: int = 0
    objectives: list = field(default_factory=lambda: [DDPM_EPS, FLOW_MATCHING, FLOW_MATCHING, FLOW_MATCHING])
    architecture: str | None = None  # None: tiny-16 up to 16 px latents, else tiny
    latent_space: str = "pixel"  # pixel | sd-vae (the GPU recipe)

    def __post_init__(self):
        if self.clusters < 2:
            raise ValueError(f"clusters must be >= 2 (an ensemble and a router), got {self.clusters}")
        for name in ("expert_steps", "router_steps", "sample_steps", "pair_prompts", "prompts_per_cluster"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.images_per_prompt < 2:
            raise ValueError(f"images_per_prompt must be >= 2 (diversity is within a prompt), got {self.images_per_prompt}")
        if any(not 0 < t < 1 for t in self.taus):
            raise ValueError(f"taus must lie in (0, 1), got {self.taus}")

    def pipeline_params(self):
        from hddm_core.pipeline.params import PipelineParams
        from hddm_core.pipeline.presets import DEMO

        return PipelineParams.from_preset(
            DEMO, artifact_root=self.artifact_root, objectives=list(self.objectives),
            download={"embedded": {"size": 32, "limit": self.emoji}, "image_size": 32},
            cluster={"n_clusters": self.clusters, "balance": True},
            prepare={"resolution": self.resolution, "max_length": 16, "latent_space": self.latent_space},
            expert_training={"architecture": self.expert_architecture(), "steps": self.expert_steps,
                             "batch_size": 32, "lr": 2e-3, "ema_decay": 0.995,
                             "checkpoint_interval": max(1, self.expert_steps // 4)},
            router={"training": {"architecture": self.expert_architecture(), "steps": self.router_steps, "batch_size": 64, "lr": 2e-3, "ema_decay": 0.99,
                                 "checkpoint_interval": max(1, self.router_steps // 2)}, "eval_samples_per_bucket": 32})

    def expert_architecture(self) -> str:
        if self.architecture:
            return self.architecture
        latent = self.resolution // 8 if self.latent_space != "pixel" else self.resolution
        return TINY_16 if latent <= 16 else TINY

    def describe(self) -> dict:
        return asdict(self)


@dataclass
class ComparisonSet:
    heterogeneous: list  # expert folders, cluster order
    homogeneous: list
    monolith: str
    router: str
    objectives: list  # of the heterogeneous experts
    prepare_prefix: str
    train_seconds: float


def train_comparison_set(cfg: TrainedStudyConfig) -> ComparisonSet:
    """Data stages, K heterogeneous experts, the two baselines and the router (finished stages reused)."""
    from hddm_core.pipeline import stages
    from hddm_core.pipeline.baselines import homogeneous_experts, run_train_homogeneous, run_train_monolith
    from hddm_core.pipeline.params import TrainHomogeneousParams, TrainMonolithParams

    t0 = time.time()
    p = cfg.pipeline_params()
    # `hddmp demo` feature-embeds with the Inception-v3 FID weights shipped with the project; same here
    for run, sub in ((stages.run_download, p.download), (stages.run_recaption, p.recaption),
                     (stages.run_embed, p.embed), (stages.run_cluster, p.cluster), (stages.run_prepare, p.prepare)):
        run(p.stage(sub))
    k = stages.n_clusters(p, p.prepare.prefix)
    hetero = [stages.run_train_expert(p.expert_params(c)) for c in range(k)]
    common = dict(artifact_root=p.artifact_root, training=p.expert_training, prepare_prefix=p.prepare.prefix)
    homo = run_train_homogeneous(TrainHomogeneousParams(objective=FLOW_MATCHING, **common))
    mono = run_train_monolith(TrainMonolithParams(objective=FLOW_MATCHING, **common))
    router = stages.run_train_router(p.stage(p.router))
    return ComparisonSet([e.uri for e in hetero], homogeneous_experts(homo), mono.uri, router.uri,
                         [e.extra["objective"] for e in hetero], p.prepare.prefix, time.time() - t0)


def run_trained_study(cfg: TrainedStudyConfig, docs_dir: str, command: str) -> str:
    """Train (or reuse) the comparison set, measure every comparison, write docs_dir/results.md."""
    from hddm_core.pipeline.study_measure import measure
    from hddm_core.pipeline.study_results import write_results

    t0 = time.time()
    cs = train_comparison_set(cfg)
    m = measure(cfg, cs)
    return write_results(docs_dir, cfg, cs, m, command=command, wall_seconds=time.time() - t0)
