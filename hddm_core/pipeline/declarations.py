"""What an expert declares beyond its objective, checked at the edge (stage parameters): where its
weights start (`init`), its noise schedule and how its network reads time.

Valid combinations (one line naming the field otherwise):
- schedule: an eps-predicting objective (DDPM) trains on a variance-preserving schedule (DDPM
  linear betas or cosine); a velocity or x0 objective on the objective's own path (flow matching is
  defined on the linear path x_t = (1 - t) x0 + t eps).
- time_input: a network initialised from DiT keeps reading time as DiT did, the DDPM index
  round(999 t) ("discrete-999"; the paper's choice for flow-matching experts initialised from DiT);
  left empty, it is set to that. A network trained from scratch may read any time input.
- init: "scratch", a converted expert folder (expert.json + safetensors, `hddmp expert import-dit`),
  or a public DiT checkpoint (.pt / .pth / .safetensors, DiT-XL-2-256x256 key layout), converted by
  hddm_core.checkpoints.dit_import when training starts.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from hddm_core.checkpoints.dit_import import DIT_TIME_INPUT
from hddm_core.diffusion.objectives import OBJECTIVE_NAMES, OBJECTIVES
from hddm_core.diffusion.schedules import SCHEDULES, get_schedule
from hddm_core.diffusion.time_inputs import TIME_INPUTS
from hddm_core.pipeline.form_schema import form_schema, one_of_values, when
from hddm_core.pipeline.param_checks import SAFE_CONFIG
from hddm_core.training.config import INIT_SCRATCH

DIT_SUFFIXES = (".pt", ".pth", ".safetensors")
SCHEDULE_NAMES = tuple(SCHEDULES)
Objective = Literal[tuple(OBJECTIVE_NAMES)]
Schedule = Literal[SCHEDULE_NAMES]
TimeInput = Literal[TIME_INPUTS]


def is_dit_checkpoint(init: str) -> bool:
    """A raw DiT checkpoint file (converted at training start), not a converted expert folder."""
    return init.lower().endswith(DIT_SUFFIXES)


def _vp(name: str) -> bool:
    return bool(get_schedule(name).variance_preserving)


def check_declaration(objective: str, schedule: Optional[str], time_input: Optional[str], init: str,
                      where: str = "") -> None:
    """Raise ValueError naming the field (with `where` in front) when the combination is invalid."""
    own = OBJECTIVES[objective]["schedule"]
    if schedule is not None and _vp(schedule) != _vp(own):
        valid = [s for s in SCHEDULE_NAMES if _vp(s) == _vp(own)]
        kind = "a variance-preserving" if _vp(own) else "its own (non variance-preserving)"
        raise ValueError(f"{where}schedule {schedule!r} does not fit objective {objective!r}, which trains on "
                         f"{kind} schedule; valid: {valid}")
    if not isinstance(init, str) or not init.strip():
        raise ValueError(f"{where}init {init!r} must be {INIT_SCRATCH!r}, a converted expert folder or a DiT checkpoint "
                         f"({', '.join(DIT_SUFFIXES)})")
    if init != INIT_SCRATCH and time_input not in (None, DIT_TIME_INPUT):
        raise ValueError(f"{where}time_input {time_input!r} does not fit init {init!r}: a network initialised from DiT "
                         f"reads round(999 t); valid: {DIT_TIME_INPUT!r} (or leave it empty)")


def valid_schedules(objective: str) -> list[str]:
    """The schedules check_declaration accepts for `objective`."""
    own = _vp(OBJECTIVES[objective]["schedule"])
    return [s for s in SCHEDULE_NAMES if _vp(s) == own]


# JSON Schema form of check_declaration (hddm_core.pipeline.form_schema): the same tables, so the Prefect
# server refuses a bad declaration before the run exists. A non-blank init is a pattern.
INIT_PATTERN = r"\S"


def declaration_rules(default_objective: Optional[str], default_init: Optional[str] = INIT_SCRATCH) -> list[dict]:
    """if/then rules: per objective, its valid schedules; a non-scratch init, DiT's time input.

    default_objective / default_init: the value a left-out field takes (None: the field may be left
    empty, and then the rule is not stated here)."""
    rules = [when("objective", name, default_objective, one_of_values("schedule", [*valid_schedules(name), None]))
             for name in OBJECTIVE_NAMES]
    test = {"properties": {"init": {"not": {"const": INIT_SCRATCH}, "type": "string"}}, "required": ["init"]}
    rules.append({"if": test, "then": one_of_values("time_input", [DIT_TIME_INPUT, None])})
    if default_init not in (None, INIT_SCRATCH):  # a left-out init is a DiT one
        rules.append({"if": {"not": {"required": ["init"]}}, "then": one_of_values("time_input", [DIT_TIME_INPUT, None])})
    return rules


def fill_time_input(data: dict) -> dict:
    """Before validation: an expert initialised from DiT with no time_input gets DiT's."""
    if isinstance(data, dict) and data.get("init") not in (None, INIT_SCRATCH) and data.get("time_input") is None:
        data = dict(data, time_input=DIT_TIME_INPUT)
    return data


INIT_HELP = ("Where the expert's weights start: scratch, a converted expert folder (`hddmp expert import-dit`), or a "
              "public DiT checkpoint (.pt/.pth/.safetensors path or store URL, DiT-XL-2-256x256 layout) converted "
              "when training starts.")
SCHEDULE_HELP = "Noise schedule override; empty = the objective's own (DDPM: variance-preserving only)."
TIME_INPUT_HELP = ("How the network reads t; empty = the objective's own, or discrete-999 (round(999 t)) when "
                    "initialised from DiT.")


class ExpertOverride(BaseModel):
    """One cluster's expert declaration in the pipeline (objective, init, schedule, time input)."""

    model_config = ConfigDict(extra="forbid", title="Expert override", json_schema_extra=form_schema, **SAFE_CONFIG)

    cluster_id: int = Field(..., ge=0, le=4095, description="The cluster whose expert this declaration replaces.")
    objective: Optional[Objective] = Field(None, description="Empty: the pipeline's objectives, in turn.")
    init: Optional[str] = Field(None, json_schema_extra={"pattern": INIT_PATTERN},
                                description="Empty: the pipeline's expert_init. " + INIT_HELP)
    schedule: Optional[Schedule] = Field(None, description=SCHEDULE_HELP)
    time_input: Optional[TimeInput] = Field(None, description=TIME_INPUT_HELP)

    @classmethod
    def form_rules(cls) -> list[dict]:
        return declaration_rules(default_objective=None, default_init=None)
