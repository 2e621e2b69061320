"""Parameters of the model stages: the training loop, one expert, the baselines, the router, expert
registration and the evaluation. Defaults are the demo's sizes (tiny-16 on a CPU, minutes); the paper
preset (presets.py) holds HDDM's."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hddm_core.diffusion.objectives import FLOW_MATCHING
from hddm_core.inference.routing import FULL, THRESHOLD, TOP_1, TOP_2
from hddm_core.metrics.fid import INCEPTION_DIM, min_samples
from hddm_core.models.presets import TINY_16
from hddm_core.pipeline.declarations import (INIT_HELP, INIT_PATTERN, SCHEDULE_HELP, TIME_INPUT_HELP, Objective,
                                             Schedule, TimeInput, check_declaration, declaration_rules,
                                             fill_time_input)
from hddm_core.pipeline.form_schema import section
from hddm_core.pipeline.param_checks import KEY_NAME_PATTERN, check_key_name, check_prefix
from hddm_core.pipeline.params_base import (AUTO_DEVICE, FORM_CONFIG, MAX_SEED, Architecture, Device, Precision,
                                            RoutingMode, StageParams, StageSettings)
from hddm_core.training.config import INIT_SCRATCH

FID_MIN_SAMPLES = min_samples(INCEPTION_DIM)  # n > d for a full-rank 2048-d covariance
PREPARE_PREFIX_HELP = "Prefix of the prepare stage whose clusters it trains on."


class TrainingParams(BaseModel):
    """Loop settings shared by experts and the router."""

    model_config = ConfigDict(title="Training loop", **FORM_CONFIG)

    architecture: Architecture = Field(TINY_16, description="Model preset (tiny-16/tiny for CPU; S..XL are DiT sizes).")
    # 1000 steps (the demo's): at 200 the 16 px samples were colour noise; at 1000-1500 they show each
    # prompt's layout and palette (~50 s per expert on 2 CPU threads)
    steps: int = Field(1000, ge=1, le=10_000_000, title="Training steps", description="Optimiser steps.")
    batch_size: int = Field(32, ge=1, le=65536, description="Samples per step (capped by the dataset's size).")
    lr: float = Field(2e-3, gt=0, le=1.0, title="Learning rate", description="AdamW learning rate (constant "
                                                                             "after the warm-up).")
    warmup_steps: int = Field(0, ge=0, le=10_000_000, description="Linear learning-rate warm-up steps; 0 = none.")
    ema_decay: float = Field(0.995, ge=0, lt=1, title="EMA decay", description="Decay of the weights' exponential "
                                                                               "moving average (the exported weights).")
    checkpoint_interval: int = Field(250, ge=1, le=10_000_000, description="Steps between checkpoints (a stopped run "
                                                                           "resumes from the latest).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of initialisation, batches and noise.")
    device: Device = Field(AUTO_DEVICE, description="Where it trains: auto = cuda when a GPU is visible, else cpu.")
    precision: Precision = Field("fp32", description="fp32, or bf16 autocast (GPUs with bf16).")
    gradient_checkpointing: bool = Field(False, description="Recompute each DiT block in the backward pass instead of "
                                                            "storing its activations (experts; for 24-48 GB GPUs).")


def router_training() -> TrainingParams:
    """The router's loop defaults (the demo's): a larger batch, fewer steps than an expert."""
    return TrainingParams(steps=400, batch_size=64, ema_decay=0.99, checkpoint_interval=200)


class TrainExpertParams(StageParams):
    """One expert on one cluster."""

    model_config = ConfigDict(title="Train one expert")

    cluster_id: int = Field(0, ge=0, le=4095, description="The cluster this expert trains on (alone, one device).")
    objective: Objective = Field(FLOW_MATCHING, description="ddpm-eps (epsilon-prediction) or flow-matching (velocity).")
    training: TrainingParams = section("Expert training loop", default_factory=TrainingParams,
                                     description="The expert's training loop.")
    caption_dropout: float = Field(0.1, ge=0, lt=1, description="Probability of the null caption (CFG training).")
    init: str = Field(INIT_SCRATCH, description=INIT_HELP, json_schema_extra={"pattern": INIT_PATTERN})
    schedule: Optional[Schedule] = Field(None, description=SCHEDULE_HELP)
    time_input: Optional[TimeInput] = Field(None, description=TIME_INPUT_HELP)
    prepare_prefix: str = Field("prepare", description=PREPARE_PREFIX_HELP)
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

    @classmethod
    def form_rules(cls) -> list[dict]:
        return declaration_rules(cls.model_fields["objective"].default)


class TrainMonolithParams(TrainExpertParams):
    """The monolith baseline: one model on every cluster with the K experts' total compute (K x
    training.steps at the same batch size). cluster_id is ignored (recorded as 0 in its manifest)."""

    model_config = ConfigDict(title="Train the monolith baseline")

    objective: Objective = Field(FLOW_MATCHING, description="The monolith's objective (paper: flow matching).")


class TrainHomogeneousParams(StageParams):
    """The homogeneous baseline: one expert per cluster, all with the same objective (flow matching),
    trained by the train-expert runner (an identical expert of the heterogeneous run is reused)."""

    model_config = ConfigDict(title="Train the homogeneous baseline")

    objective: Objective = Field(FLOW_MATCHING, description="Every expert's objective (paper: flow matching).")
    training: TrainingParams = section("Expert training loop", default_factory=TrainingParams,
                                     description="Every expert's training loop.")
    caption_dropout: float = Field(0.1, ge=0, lt=1, description="Probability of the null caption (CFG training).")
    prepare_prefix: str = Field("prepare", description=PREPARE_PREFIX_HELP)
    runs_prefix: str = Field("experts/runs", description="Training runs live under here (shared with train-expert).")
    prefix: str = Field("baselines/homogeneous", description="Where the ensemble's manifest (its experts) is written.")

    def expert_params(self, cluster_id: int) -> TrainExpertParams:
        return TrainExpertParams(artifact_root=self.artifact_root, force=self.force, cluster_id=cluster_id,
                                 objective=self.objective, training=self.training,
                                 caption_dropout=self.caption_dropout, prepare_prefix=self.prepare_prefix,
                                 runs_prefix=self.runs_prefix)


class RouterSection(StageSettings):
    """The router: predicts which cluster a noisy sample comes from (routing weights)."""

    model_config = ConfigDict(title="Router training")

    training: TrainingParams = section("Router training loop", default_factory=router_training,
                                     description="The router's training loop.")
    time_sampling: Literal["uniform", "logit-normal"] = Field(
        "uniform", description="How training draws the time t of each noisy sample.")
    eval_samples_per_bucket: int = Field(32, ge=1, le=100000, description="Held-out samples per time bucket in the "
                                                                          "router's accuracy report.")
    prefix: str = Field("router", description="Stage prefix in the store.")


class TrainRouterParams(RouterSection, StageParams):
    """The train-router stage."""

    prepare_prefix: str = Field("prepare", description=PREPARE_PREFIX_HELP)


class RegisterExpertParams(StageParams):
    """Validate an expert, store it under the registry and announce it."""

    model_config = ConfigDict(title="Register an expert")

    source: str = Field(..., description="Expert folder or URL holding expert.json + weights-*.safetensors.")
    name: str = Field(..., description="Name under the experts prefix (letters, digits, '.', '_', '-').",
                      json_schema_extra={"pattern": KEY_NAME_PATTERN})
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


class EvaluateSection(StageSettings):
    """Sample every routing mode with the same seeds; Frechet distance, diversity, the report."""

    model_config = ConfigDict(title="Evaluation (routing modes, FD/FID, report)")

    routing_modes: list[RoutingMode] = Field([TOP_1, TOP_2, FULL, THRESHOLD], min_length=1,
                                             description="Routing modes to sample and compare (same seeds).")
    tau: float = Field(0.3, ge=0, le=1, description="Threshold router switch time (paper: 0.2-0.3 favours FID).")
    n_prompts: int = Field(6, ge=1, le=100000, description="Captions sampled from the prepared data.")
    images_per_prompt: int = Field(3, ge=1, le=1000, description="Seeds per prompt (diversity is measured within).")
    steps: int = Field(30, ge=1, le=1000, title="Sampling steps", description="Euler steps (paper: 50).")
    cfg_scale: float = Field(1.5, ge=0, le=50, title="CFG scale",
                             description="Classifier-free guidance scale (paper: 7.5).")
    reference_images: int = Field(48, ge=3, le=100000, description="Real images (from the experts' clusters) the "
                                                                   "Frechet distance compares against.")
    fd_dims: int = Field(16, ge=2, le=2048, title="FD dimensions",
                         description="Inception features projected to this width for the small-sample Frechet "
                                     "distance (named FD-inception-projN).")
    fid_samples: Optional[int] = Field(None, ge=FID_MIN_SAMPLES, title="FID samples",
                                       description="Also compute FID (2048-d Inception) on this many samples per "
                                                   "routing mode against the held-out split's statistics; at least "
                                                   f"{FID_MIN_SAMPLES:,}; empty = none.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the prompts drawn and the sampling noise.")
    device: Device = Field(AUTO_DEVICE, description="Where sampling, decoding and feature extraction run.")
    batch_size: int = Field(64, ge=1, le=65536, description="Samples per sampler call, VAE decode and feature batch.")
    expert_grid_images: int = Field(4, ge=0, le=64, description="Images per expert alone on its own cluster's "
                                                                "prompts, one grid each; 0 = none.")
    vae_model: Optional[str] = Field(None, description="Decode latents with the VAE from here (a local copy); empty = "
                                                       "the prepare manifest's latent.model.")
    experts_prefix: str = Field("experts/registry", description="Where registered experts live (evaluated when "
                                                                "experts is empty; the pipeline registers into it).")
    evaluations_prefix: str = Field("evaluations", description="Where evaluation reports are written.")

    @field_validator("fid_samples", mode="before")
    @classmethod
    def _fid_samples(cls, v):  # before the bound, so the message says why
        if isinstance(v, int) and v < FID_MIN_SAMPLES:
            raise ValueError(f"fid_samples={v} is below the minimum {FID_MIN_SAMPLES} for FID "
                             f"({INCEPTION_DIM}-d features need n > d); leave it empty for the projected distance")
        return v


class EvaluateParams(EvaluateSection, StageParams):
    """The evaluate stage."""

    experts: list[str] = Field([], description="Expert folders/URLs; empty = every expert under experts_prefix.")
    router: Optional[str] = Field(None, description="Router folder/URL; empty = no router (single/threshold modes only).")
    prepare_prefix: str = Field("prepare", description="Prefix of the prepare stage (prompts, held-out split).")
    cluster_prefix: str = Field("cluster", description="Prefix of the cluster stage (reference images).")
