"""Parameters of every pipeline stage, one definition with two faces: the Prefect UI form (flows take
these models as parameters) and the command line (hddm_cli builds its options from the same fields).

Pydantic v2 models with descriptions, enums (Literal) and bounds; invalid input is rejected when the
model is built, before any work starts. No Prefect import here (hddm_core never imports prefect).
Every stage model carries `artifact_root` (None: $HDDM_ARTIFACT_ROOT or ./artifacts) and `force`.
The objective, architecture and routing-mode choices are derived from the tables of the modules that
own them (diffusion.objectives, models.presets, inference.routing); no name is written here.
The shared base lives in params_base.py and the data stages' models in params_data.py; every model is
importable from here.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from hddm_core.diffusion.objectives import DDPM_EPS, FLOW_MATCHING
from hddm_core.inference.routing import FULL, THRESHOLD, TOP_1, TOP_2
from hddm_core.models.presets import TINY_16
from hddm_core.pipeline.declarations import (INIT_HELP, SCHEDULE_HELP, TIME_INPUT_HELP, ExpertOverride,
                                             Objective, Schedule, TimeInput, check_declaration, fill_time_input)
from hddm_core.pipeline.param_checks import SAFE_CONFIG, check_key_name, check_prefix  # noqa: F401 (re-exported)
from hddm_core.pipeline.params_base import (AUTO_DEVICE, MAX_SEED, Architecture, Device, PipelinePreset, Precision,  # noqa: F401
                                            RoutingMode, StageParams, resolve_device)
from hddm_core.pipeline.params_data import (ClusterParams, DownloadParams, EmbeddedParams, EmbedParams,  # noqa: F401
                                            LaionParams, PrepareParams, RecaptionParams)
from hddm_core.pipeline.presets import fill_preset
from hddm_core.training.config import INIT_SCRATCH


class TrainingParams(BaseModel):
    """Loop settings shared by experts and the router."""

    model_config = ConfigDict(extra="forbid", **SAFE_CONFIG)

    architecture: Architecture = Field(TINY_16, description="Model preset (tiny-16/tiny for CPU; S..XL are DiT sizes).")
    steps: int = Field(200, ge=1, le=10_000_000)
    batch_size: int = Field(32, ge=1, le=65536)
    lr: float = Field(1e-3, gt=0, le=1.0)
    warmup_steps: int = Field(0, ge=0, le=10_000_000)
    ema_decay: float = Field(0.99, ge=0, lt=1)
    checkpoint_interval: int = Field(100, ge=1, le=10_000_000)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Device = AUTO_DEVICE
    precision: Precision = "fp32"
    gradient_checkpointing: bool = Field(False, description="Recompute each DiT block in the backward pass instead of "
                                                            "storing its activations (experts; for 24-48 GB GPUs).")


class TrainExpertParams(StageParams):
    cluster_id: int = Field(0, ge=0, le=4095, description="The cluster this expert trains on (alone, one device).")
    objective: Objective = Field(FLOW_MATCHING, description="ddpm-eps (epsilon-prediction) or flow-matching (velocity).")
    training: TrainingParams = Field(default_factory=TrainingParams)
    caption_dropout: float = Field(0.1, ge=0, lt=1, description="Probability of the null caption (CFG training).")
    init: str = Field(INIT_SCRATCH, description=INIT_HELP)
    schedule: Optional[Schedule] = Field(None, description=SCHEDULE_HELP)
    time_input: Optional[TimeInput] = Field(None, description=TIME_INPUT_HELP)
    prepare_prefix: str = "prepare"
    runs_prefix: str = Field("experts/runs", description="Training runs (checkpoints, exported expert) live under here.")
    clustering_version: Optional[str] = Field(
        None, description="The run's clustering version, declared in the expert's manifest (contributors: from "
                          "`hddmp contrib fetch`; checked at submission). Empty: the run's own, recorded by the prepare stage.")

    @model_validator(mode="before")
    @classmethod
    def _dit_time(cls, data):
        return fill_time_input(data)

    @model_validator(mode="after")
    def _declaration(self):
        check_declaration(self.objective, self.schedule, self.time_input, self.init)
        return self


class TrainMonolithParams(TrainExpertParams):
    """The monolith baseline: one model on every cluster with the K experts' total compute (K x
    training.steps at the same batch size). cluster_id is ignored (recorded as 0 in its manifest)."""

    objective: Objective = Field(FLOW_MATCHING, description="The monolith's objective (paper: flow matching).")


class TrainHomogeneousParams(StageParams):
    """The homogeneous baseline: one expert per cluster, all with the same objective (flow matching),
    trained by the train-expert runner (an identical expert of the heterogeneous run is reused)."""

    objective: Objective = Field(FLOW_MATCHING, description="Every expert's objective (paper: flow matching).")
    training: TrainingParams = Field(default_factory=TrainingParams)
    caption_dropout: float = Field(0.1, ge=0, lt=1, description="Probability of the null caption (CFG training).")
    prepare_prefix: str = "prepare"
    runs_prefix: str = Field("experts/runs", description="Training runs live under here (shared with train-expert).")
    prefix: str = Field("baselines/homogeneous", description="Where the ensemble's manifest (its experts) is written.")

    def expert_params(self, cluster_id: int) -> TrainExpertParams:
        return TrainExpertParams(artifact_root=self.artifact_root, force=self.force, cluster_id=cluster_id,
                                 objective=self.objective, training=self.training,
                                 caption_dropout=self.caption_dropout, prepare_prefix=self.prepare_prefix,
                                 runs_prefix=self.runs_prefix)


class TrainRouterParams(StageParams):
    training: TrainingParams = Field(default_factory=lambda: TrainingParams(steps=300, lr=1e-3))
    time_sampling: Literal["uniform", "logit-normal"] = "uniform"
    eval_samples_per_bucket: int = Field(64, ge=1, le=100000)
    prepare_prefix: str = "prepare"
    prefix: str = "router"


class RegisterExpertParams(StageParams):
    source: str = Field(..., description="Expert folder or URL holding expert.json + weights-*.safetensors.")
    name: str = Field(..., description="Name under the experts prefix (letters, digits, '.', '_', '-').")
    experts_prefix: str = Field("experts/registry", description="Where registered experts live in the store.")
    emit_event: bool = Field(True, description="Emit hddm.expert.landed (Prefect event) once stored.")

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        return check_key_name(v, "expert name")

    @field_validator("experts_prefix")
    @classmethod
    def _prefix(cls, v):
        return check_prefix(v, "experts_prefix")


class EvaluateParams(StageParams):
    experts: list[str] = Field([], description="Expert folders/URLs; empty = every expert under experts_prefix.")
    router: Optional[str] = Field(None, description="Router folder/URL; empty = no router (single/threshold modes only).")
    routing_modes: list[RoutingMode] = Field([TOP_1, TOP_2, FULL, THRESHOLD], min_length=1,
                                             description="Routing modes to sample and compare (same seeds).")
    tau: float = Field(0.3, ge=0, le=1, description="Threshold router switch time (paper: 0.2-0.3 favours FID).")
    n_prompts: int = Field(8, ge=1, le=100000, description="Captions sampled from the prepared data.")
    images_per_prompt: int = Field(4, ge=1, le=1000, description="Seeds per prompt (diversity is measured within).")
    steps: int = Field(20, ge=1, le=1000, description="Euler steps (paper: 50).")
    cfg_scale: float = Field(1.5, ge=0, le=50, description="Classifier-free guidance scale (paper: 7.5).")
    reference_images: int = Field(64, ge=3, le=100000, description="Real images (from the experts' clusters) the "
                                                                   "Frechet distance compares against.")
    fd_dims: int = Field(16, ge=2, le=2048, description="Inception features projected to this width for the "
                                                        "small-sample Frechet distance (named FD-inception-projN).")
    fid_samples: Optional[int] = Field(None, description="Also compute FID (2048-d Inception) on this many samples "
                                                          "per routing mode against the held-out split's "
                                                          "statistics; at least 2,049; empty = none.")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Device = Field(AUTO_DEVICE, description="Where sampling, decoding and feature extraction run.")
    batch_size: int = Field(64, ge=1, le=65536, description="Samples per sampler call, VAE decode and feature batch.")

    @field_validator("fid_samples")
    @classmethod
    def _fid_samples(cls, v):
        from hddm_core.metrics.fid import INCEPTION_DIM, min_samples

        if v is not None and v < min_samples(INCEPTION_DIM):
            raise ValueError(f"fid_samples={v} is below the minimum {min_samples(INCEPTION_DIM)} for FID "
                             f"({INCEPTION_DIM}-d features need n > d); leave it empty for the projected distance")
        return v
    expert_grid_images: int = Field(4, ge=0, le=64, description="Images per expert alone on its own cluster's "
                                                                "prompts, one grid each; 0 = none.")
    vae_model: Optional[str] = Field(None, description="Decode latents with the VAE from here (a local copy); empty = "
                                                       "the prepare manifest's latent.model.")
    experts_prefix: str = "experts/registry"
    prepare_prefix: str = "prepare"
    cluster_prefix: str = "cluster"
    evaluations_prefix: str = "evaluations"


class PipelineParams(StageParams):
    """The end-to-end job: download -> recaption -> embed -> cluster -> prepare -> K experts -> router -> evaluate."""

    preset: Optional[PipelinePreset] = Field(
        None, description="Fill defaults from a preset (demo: the CPU demo; paper: HDDM's configuration, "
                          "docs/paper-recipe.md); fields you set win. Empty: the plain defaults.")
    download: DownloadParams = Field(default_factory=DownloadParams)
    recaption: RecaptionParams = Field(default_factory=RecaptionParams)
    embed: EmbedParams = Field(default_factory=EmbedParams)
    cluster: ClusterParams = Field(default_factory=ClusterParams)
    prepare: PrepareParams = Field(default_factory=PrepareParams)
    objectives: list[Objective] = Field([DDPM_EPS, FLOW_MATCHING], min_length=1,
                                        description="Objectives assigned to clusters in turn (mixed = heterogeneous).")
    expert_training: TrainingParams = Field(default_factory=TrainingParams)
    expert_init: str = Field(INIT_SCRATCH, description="Every expert's init unless overridden. " + INIT_HELP)
    expert_overrides: list[ExpertOverride] = Field(
        [], description="Per-cluster declarations (objective, init, schedule, time_input) that replace the ones above.")
    router: TrainRouterParams = Field(default_factory=TrainRouterParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    train_deployment: Optional[str] = Field(
        None, description="'flow/deployment' to fan expert training out as flow runs on a work pool "
                          "(e.g. train-expert/train-expert on hddm-gpu); empty = in-process.")
    register_experts: bool = Field(True, description="Register each trained expert (validated, stored, event emitted).")
    local_trainers: Optional[int] = Field(
        None, ge=1, description="The Prefect flow without train_deployment: how many experts train at once, each "
                                "in its own process (1 = one after the other in this process); empty = one per CPU "
                                "core when experts train on the CPU, 1 on a GPU (hddm_flows.local_fan_out). The "
                                "serverless `hddmp pipeline` trains them one after the other.")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data, info: ValidationInfo):
        # context {"preset_applied": True}: the caller (the command line) merged the preset itself, so a
        # value it passes is explicit even when it equals the plain default
        if isinstance(data, dict) and data.get("preset") and not (info.context or {}).get("preset_applied"):
            data = fill_preset(data, data["preset"], plain_pipeline_defaults())
        return data

    @classmethod
    def from_preset(cls, preset: str, **values) -> "PipelineParams":
        """The preset with `values` on top; a value given here always wins, even one equal to the plain
        default (the command line's reading; a bare PipelineParams(preset=...) reads like the Prefect form)."""
        data = fill_preset({**values, "preset": preset}, preset, plain={})
        return cls.model_validate(data, context={"preset_applied": True})

    @model_validator(mode="after")
    def _declarations(self):
        for i, o in enumerate(self.expert_overrides):
            init = o.init or self.expert_init
            objective = o.objective or self.objectives[o.cluster_id % len(self.objectives)]
            check_declaration(objective, o.schedule, o.time_input, init, where=f"expert_overrides[{i}].")
        return self

    def override(self, cluster_id: int) -> Optional[ExpertOverride]:
        found = [o for o in self.expert_overrides if o.cluster_id == cluster_id]
        return found[-1] if found else None

    def stage(self, sub: StageParams) -> StageParams:
        """A stage's params with the pipeline's artifact_root and force applied."""
        return sub.model_copy(update={"artifact_root": self.artifact_root, "force": self.force or sub.force})

    def expert_params(self, cluster_id: int) -> TrainExpertParams:
        o = self.override(cluster_id)
        return TrainExpertParams(artifact_root=self.artifact_root, force=self.force, cluster_id=cluster_id,
                                 objective=(o and o.objective) or self.objectives[cluster_id % len(self.objectives)],
                                 init=(o and o.init) or self.expert_init, schedule=o and o.schedule,
                                 time_input=o and o.time_input, training=self.expert_training,
                                 prepare_prefix=self.prepare.prefix)


_PLAIN: dict = {}


def plain_pipeline_defaults() -> dict:
    """PipelineParams() as JSON: the defaults a preset's values replace."""
    if not _PLAIN:
        _PLAIN.update(PipelineParams().model_dump(mode="json"))
    return _PLAIN


def demo_params(artifact_root: str) -> PipelineParams:
    """The one-command demo on the embedded default, sized for 2 CPU cores in well under 15 minutes."""
    from hddm_core.pipeline.presets import DEMO

    return PipelineParams(artifact_root=artifact_root, preset=DEMO)
