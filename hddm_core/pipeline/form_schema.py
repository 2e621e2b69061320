"""What a parameter model adds to its JSON schema, which is the Prefect UI form and what the Prefect
server validates a run's parameters against before the run exists (deployments enforce it).

Every model's config sets `json_schema_extra=form_schema`; the hook
- orders the properties (`form_order`: the fields people change first) and numbers them (`position`,
  the key the Prefect UI orders a form by);
- gives every `prefix` / `*_prefix` string the safe-prefix pattern (param_checks.PREFIX_PATTERN, the same
  rule as check_prefix);
- appends the model's cross-field rules (`form_rules()`: JSON Schema if/then, derived from the tables
  that own the names) to `allOf`, so a bad combination is refused by the server, not by the run.
Rules JSON Schema cannot state (a value compared with another value, a per-cluster objective) stay in
the pydantic validators; docs/prefect-form.md lists them.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

from hddm_core.pipeline.param_checks import PREFIX_PATTERN


def form_schema(schema: dict[str, Any], cls: type) -> None:
    props = schema.get("properties", {})
    first = [k for k in getattr(cls, "form_order", ()) if k in props]
    ordered = {**{k: props[k] for k in first}, **{k: v for k, v in props.items() if k not in first}}
    props.clear()
    props.update(ordered)
    for position, (name, prop) in enumerate(props.items()):
        prop["position"] = position
        if name == "prefix" or name.endswith("_prefix"):
            prop.setdefault("pattern", PREFIX_PATTERN)
    rules = getattr(cls, "form_rules", None)
    if rules is not None and rules():
        schema["allOf"] = [*schema.get("allOf", []), *rules()]


def section(title: str, description: str, **kwargs) -> Any:
    """A nested model's field. Pydantic leaves a $ref property untitled (the model's own title would
    show), so the title goes on the property: the same model shows under two names (expert and router
    training loops)."""
    return Field(description=description, json_schema_extra={"title": title}, **kwargs)


def when(field: str, value: Any, default: Any, then: dict) -> dict:
    """{'if': field == value, 'then': then}; a field left out of the parameters counts as its default."""
    test: dict = {"properties": {field: {"const": value}}}
    if value != default:
        test["required"] = [field]
    return {"if": test, "then": then}


def one_of_values(field: str, values: list) -> dict:
    """then-clause: `field`, when present, is one of `values`."""
    return {"properties": {field: {"enum": list(values)}}}
