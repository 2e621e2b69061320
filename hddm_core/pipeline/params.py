"""Parameters of every pipeline stage, one definition with two faces: the Prefect UI form (flows take
these models as parameters) and the command line (hddm_cli builds its options from the same fields).

Pydantic v2 models with titles, descriptions, enums (Literal) and bounds; invalid input is rejected
when the model is built, before any work starts, and the JSON-Schema-expressible rules are also in
the schema (form_schema), so the Prefect server refuses them before a run exists. No Prefect import
here (hddm_core never imports prefect). The objective, architecture and routing-mode choices are
derived from the tables of the modules that own them; no name is written here.

The pipeline's form holds each stage's Section (its own settings); what the pipeline sets itself
(artifact root, force, the prefixes one stage reads another from, the experts and router evaluated)
is PIPELINE_SETS, is not in the form, and is refused with a line saying where to set it. The stage
models live in params_base.py, params_data.py and params_training.py; every model is importable here.
"""
from __future__ import annotations

from typing import Any, ClassVar, Optional

from pydantic import ConfigDict, Field, ValidationInfo, model_validator

from hddm_core.diffusion.objectives import DDPM_EPS, FLOW_MATCHING
from hddm_core.pipeline.declarations import (INIT_HELP, INIT_PATTERN, ExpertOverride, Objective,  # noqa: F401
                                             Schedule, TimeInput, check_declaration, declaration_rules)
from hddm_core.pipeline.form_schema import section
from hddm_core.pipeline.param_checks import (SAFE_CONFIG, check_key_name, check_prefix,  # noqa: F401 (re-exported)
                                             refuse_credentials)
from hddm_core.pipeline.params_base import (AUTO_DEVICE, MAX_SEED, Architecture, Device, PipelinePreset, Precision,  # noqa: F401
                                            RoutingMode, StageParams, StageSettings, resolve_device)
from hddm_core.pipeline.params_data import (ClusterParams, ClusterSection, DownloadParams, DownloadSection,  # noqa: F401
                                            EmbeddedParams, EmbedParams, EmbedSection, LaionParams, PrepareParams,
                                            PrepareSection, RecaptionParams, RecaptionSection)
from hddm_core.pipeline.params_training import (FID_MIN_SAMPLES, EvaluateParams, EvaluateSection,  # noqa: F401
                                                RegisterExpertParams, RouterSection, TrainExpertParams,
                                                TrainHomogeneousParams, TrainingParams, TrainMonolithParams,
                                                TrainRouterParams)
from hddm_core.pipeline.presets import PIPELINE_PRESETS, fill_preset
from hddm_core.training.config import INIT_SCRATCH

# What the pipeline sets in each stage's params itself, so the sections (the form) leave it out:
# section -> (the stage's model, {field: the pipeline field its value is taken from}). One table for the
# form, the refusal of a value given anyway and PipelineParams.stage().
PIPELINE_SETS: dict[str, tuple[type[StageParams], dict[str, str]]] = {
    "download": (DownloadParams, {}),
    "recaption": (RecaptionParams, {"download_prefix": "download.prefix"}),
    "embed": (EmbedParams, {"download_prefix": "download.prefix"}),
    "cluster": (ClusterParams, {"embed_prefix": "embed.prefix", "download_prefix": "download.prefix"}),
    "prepare": (PrepareParams, {"download_prefix": "download.prefix", "cluster_prefix": "cluster.prefix",
                                "recaption_prefix": "recaption.prefix"}),
    "router": (TrainRouterParams, {"prepare_prefix": "prepare.prefix"}),
    "evaluate": (EvaluateParams, {"prepare_prefix": "prepare.prefix", "cluster_prefix": "cluster.prefix"}),
}
# Set for every stage from the top level, and set by the flow at run time (no field holds them).
EVERY_STAGE_SETS = ("artifact_root", "force")
RUN_SETS = {("evaluate", "experts"): "the pipeline evaluates the experts it trained (run the `evaluate` flow "
                                     "to evaluate others)",
            ("evaluate", "router"): "the pipeline evaluates with the router it trained (run the `evaluate` flow "
                                    "for another)"}


def _hint(section: str, name: str) -> str:
    if name in EVERY_STAGE_SETS:
        return f"set the top-level {name} instead"
    if (section, name) in RUN_SETS:
        return RUN_SETS[section, name]
    return f"set {PIPELINE_SETS[section][1][name]} instead (the pipeline passes it on)"


def _refuse_set_by_pipeline(data: dict) -> dict:
    """data with each stage given as a model turned into the fields it set; ValueError (one line) for a
    field the pipeline sets itself."""
    data = dict(data)
    for part, (kind, _) in PIPELINE_SETS.items():
        given = data.get(part)
        if isinstance(given, StageSettings):
            given = data[part] = given.model_dump(exclude_unset=True)
        if not isinstance(given, dict):
            continue
        own = PipelineParams.model_fields[part].annotation.model_fields
        for name in given:
            if name in kind.model_fields and name not in own:
                raise ValueError(f"{part}.{name} is set by the pipeline, not here: {_hint(part, name)}")
    return data


class PipelineParams(StageParams):
    """The end-to-end job: download -> recaption -> embed -> cluster -> prepare -> K experts -> router ->
    evaluate. The defaults are the demo's sizes (minutes on a laptop); preset paper is HDDM's."""

    model_config = ConfigDict(title="HDDM pipeline")
    form_order: ClassVar[tuple[str, ...]] = ("preset", "artifact_root", "objectives", "train_deployment", "force")

    preset: Optional[PipelinePreset] = Field(
        None, description="Fill defaults from a preset (demo: the CPU demo, the plain defaults; paper: HDDM's "
                          "configuration, docs/paper-recipe.md); fields you set win. Empty: the plain defaults.")
    download: DownloadSection = section("Download (LAION or embedded)", default_factory=DownloadSection,
                                      description="Images and captions into webdataset shards.")
    recaption: RecaptionSection = section("Recaption (original captions or LLaVA)", default_factory=RecaptionSection,
                                        description="Original captions, or LLaVA's.")
    embed: EmbedSection = section("Embed (image features)", default_factory=EmbedSection,
                                description="Image features the clustering runs on.")
    cluster: ClusterSection = section("Cluster (hierarchical k-means)", default_factory=ClusterSection,
                                    description="Hierarchical k-means; K clusters = K experts.")
    prepare: PrepareSection = section("Prepare (latents, text tokens, held-out split)", default_factory=PrepareSection,
                                    description="Per-cluster latents, caption tokens and the held-out split.")
    objectives: list[Objective] = Field([DDPM_EPS, FLOW_MATCHING], min_length=1,
                                        description="Objectives assigned to clusters in turn (mixed = heterogeneous).")
    expert_training: TrainingParams = section("Expert training loop", default_factory=TrainingParams,
                                            description="Every expert's training loop.")
    expert_init: str = Field(INIT_SCRATCH, json_schema_extra={"pattern": INIT_PATTERN},
                             description="Every expert's init unless overridden. " + INIT_HELP)
    expert_overrides: list[ExpertOverride] = Field(
        [], description="Per-cluster declarations (objective, init, schedule, time_input) that replace the ones above.")
    router: RouterSection = section("Router training", default_factory=RouterSection,
                                  description="The router that weights the experts.")
    evaluate: EvaluateSection = section("Evaluation (routing modes, FD/FID, report)", default_factory=EvaluateSection,
                                      description="Every routing mode sampled with the same seeds; the report.")
    train_deployment: Optional[str] = Field(
        None, description="'flow/deployment' to fan expert training out as flow runs on a work pool "
                          "(e.g. train-expert/train-expert on hddm-gpu); empty = in-process.")
    register_experts: bool = Field(True, description="Register each trained expert (validated, stored, event emitted) "
                                                     "under evaluate.experts_prefix.")
    local_trainers: Optional[int] = Field(
        None, ge=1, description="The Prefect flow without train_deployment: how many experts train at once, each "
                                "in its own process (1 = one after the other in this process); empty = one per CPU "
                                "core when experts train on the CPU, 1 on a GPU (hddm_flows.local_fan_out). The "
                                "serverless `hddmp pipeline` trains them one after the other.")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data, info: ValidationInfo):
        if isinstance(data, dict):  # credentials first: that refusal never echoes the value
            data = _refuse_set_by_pipeline(refuse_credentials(data))
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
        check_declaration(self.objectives[0], None, None, self.expert_init, where="expert_")  # a blank init
        for i, o in enumerate(self.expert_overrides):
            init = o.init or self.expert_init
            objective = o.objective or self.objectives[o.cluster_id % len(self.objectives)]
            check_declaration(objective, o.schedule, o.time_input, init, where=f"expert_overrides[{i}].")
        return self

    @classmethod
    def form_rules(cls) -> list[dict]:
        """A preset that downloads a parquet needs its key; a DiT expert_init, DiT's time input in the
        overrides that leave init empty."""
        rules = []
        for name, values in PIPELINE_PRESETS.items():
            if values.get("download", {}).get("source") == "parquet":
                rules.append({"if": {"properties": {"preset": {"const": name}}, "required": ["preset"]},
                              "then": {"required": ["download"], "properties": {"download": {
                                  "required": ["url_list_key"],
                                  "properties": {"url_list_key": {"type": "string", "minLength": 1}}}}}})
        dit_init = declaration_rules(None, default_init="dit")[-1]  # the rule for an init left empty
        rules.append({"if": {"properties": {"expert_init": {"not": {"const": INIT_SCRATCH}}},
                             "required": ["expert_init"]},
                      "then": {"properties": {"expert_overrides": {"items": dit_init}}}})
        return rules

    def override(self, cluster_id: int) -> Optional[ExpertOverride]:
        found = [o for o in self.expert_overrides if o.cluster_id == cluster_id]
        return found[-1] if found else None

    def stage(self, sub: StageSettings) -> StageParams:
        """A section as its stage's params: the pipeline's artifact_root and force, and the prefixes it
        reads from the stages before it (PIPELINE_SETS)."""
        if isinstance(sub, StageParams):  # already a stage's params (a caller's own)
            return sub.model_copy(update={"artifact_root": self.artifact_root, "force": self.force or sub.force})
        name = next(n for n in PIPELINE_SETS if type(sub) is type(self).model_fields[n].annotation)
        kind, sets = PIPELINE_SETS[name]
        derived = {field: self._value(path) for field, path in sets.items()}
        return kind.model_validate({**sub.model_dump(), **derived, "artifact_root": self.artifact_root,
                                    "force": self.force})

    def _value(self, path: str) -> Any:
        node: Any = self
        for part in path.split("."):
            node = getattr(node, part)
        return node

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
