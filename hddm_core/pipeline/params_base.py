"""The shared face of every stage's parameters: StageSettings (what a stage does: safe prefixes, the
form hook), StageParams (+ where it runs: artifact root, force), the device and precision choices,
and the architecture / routing-mode Literals derived from the tables that own those names.

Each stage has two models: `<Stage>Section` (StageSettings: the stage's own settings, what the
pipeline form shows for it) and `<Stage>Params` (the section + artifact root, force and the prefixes
it reads other stages from: the stage flow's form). The pipeline sets the rest itself
(hddm_core.pipeline.params.PIPELINE_SETS)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hddm_core.inference.routing import ROUTING_NAMES
from hddm_core.models.presets import PRESET_NAMES
from hddm_core.pipeline.form_schema import form_schema
from hddm_core.pipeline.param_checks import SAFE_CONFIG, check_prefix, refuse_credentials
from hddm_core.pipeline.presets import PIPELINE_PRESET_NAMES
from hddm_core.redact import mask_secrets

Architecture = Literal[tuple(reversed(PRESET_NAMES))]  # smallest first
RoutingMode = Literal[tuple(ROUTING_NAMES)]
AUTO_DEVICE = "auto"  # cuda when one is visible, else cpu
Device = Literal[AUTO_DEVICE, "cpu", "cuda"]
DEVICE_HELP = "Where it runs: auto = cuda when a GPU is visible, else cpu."
FORM_CONFIG = dict(extra="forbid", json_schema_extra=form_schema, **SAFE_CONFIG)  # every parameter model


def resolve_device(name: str) -> str:
    """A Device value to a torch device name: 'auto' is cuda when one is visible, else cpu."""
    if name != AUTO_DEVICE:
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


PipelinePreset = Literal[PIPELINE_PRESET_NAMES]
Precision = Literal["fp32", "bf16"]

MAX_SEED = 2**32 - 1  # numpy's seed range


class StageSettings(BaseModel):
    """A stage's own settings (prefixes checked; no artifact root or force: see StageParams)."""

    model_config = ConfigDict(validate_assignment=True, **FORM_CONFIG)

    @model_validator(mode="after")
    def _prefixes(self):
        for name in type(self).model_fields:
            if name == "prefix" or name.endswith("_prefix"):
                check_prefix(getattr(self, name), name)
        return self


class StageParams(StageSettings):
    """Fields every stage flow shares: where its artifacts live, and whether to recompute."""

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
