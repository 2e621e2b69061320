"""Command-line options generated from the pydantic parameter models (hddm_core.pipeline.params): one
definition, two faces. The flows take the same models, so the Prefect UI form and `hddmp --help`
show the same names, descriptions, choices, bounds and defaults.

    add_model_options(parser, TrainExpertParams)        # --cluster-id, --objective {ddpm-eps,...}, ...
    params = model_from_args(TrainExpertParams, args)   # pydantic validates; errors become one line

Rules: a field `cluster_id` is `--cluster-id`; Literal -> choices; bool -> --x/--no-x; list -> several
values; a nested model's fields are `--<field>-<name>` (the `training` loop settings are flattened to
plain `--steps`, `--lr`, ...). Options left unset are not passed, so pydantic's defaults apply.
"""
from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from hddm_core.redact import mask_secrets

FLATTENED = ("training",)  # nested models whose fields become top-level options
DEST_PREFIX = "p__"


def _unwrap_optional(annotation):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _is_model(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _bounds(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "at least"),
                          ("max_length", "at most")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sym} {value}" + (" value(s)" if "length" in attr else ""))
    return ", ".join(parts)


def _default_text(field: FieldInfo) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return ""
    else:
        return "required"
    return value_text(value)


def value_text(value) -> str:
    """'default: ...' as --help shows a value."""
    if isinstance(value, BaseModel):
        return ""
    if value is None:
        return "default: unset"
    if isinstance(value, bool):
        return f"default: {'yes' if value else 'no'}"
    if isinstance(value, list):
        return "default: " + (" ".join(json.dumps(v) if isinstance(v, dict) else str(v) for v in value)
                              if value else "none")
    return f"default: {value}"


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def option_name(path: tuple[str, ...]) -> str:
    return "--" + "-".join(p.replace("_", "-") for p in path)


class _Spec(typing.NamedTuple):
    path: tuple[str, ...]  # field path in the model (nested models included)
    option: str
    dest: str


def add_model_options(parser: argparse.ArgumentParser, model: type[BaseModel], *, exclude: tuple[str, ...] = (),
                      _path: tuple[str, ...] = (), _opt_path: tuple[str, ...] = (), _group=None) -> list[_Spec]:
    """Add one option per field of `model` (recursively) to parser; returns the specs for model_from_args."""
    specs: list[_Spec] = []
    target = _group or parser
    for name, field in model.model_fields.items():
        if name in exclude and not _path:
            continue
        annotation, optional = _unwrap_optional(field.annotation)
        path = _path + (name,)
        if _is_model(annotation):
            title = (field.description or annotation.__doc__ or name).strip().splitlines()[0]
            group = parser.add_argument_group(f"{name.replace('_', ' ')} options", title)
            opt_path = _opt_path if name in FLATTENED else _opt_path + (name,)
            specs += add_model_options(parser, annotation, _path=path, _opt_path=opt_path, _group=group)
            continue
        option = option_name(_opt_path + (name,))
        dest = DEST_PREFIX + "__".join(path)
        help_parts = [field.description or ""]
        kwargs: dict[str, Any] = {"dest": dest, "default": None}
        origin = typing.get_origin(annotation)
        item = annotation
        if origin in (list, tuple):
            item = (typing.get_args(annotation) or (str,))[0]
            kwargs["nargs"] = "*"
            kwargs["metavar"] = "VALUE"
        if _is_model(item):  # a list of models: each value one JSON object
            kwargs["type"] = _json_object
            kwargs["metavar"] = "JSON"
            help_parts.append("(each value a JSON object: " + ", ".join(item.model_fields) + ")")
        elif typing.get_origin(item) is Literal:
            kwargs["choices"] = list(typing.get_args(item))
            kwargs["metavar"] = "{" + ",".join(map(str, kwargs["choices"])) + "}"
            kwargs["type"] = type(kwargs["choices"][0])
        elif item is bool and "nargs" not in kwargs:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif item in (int, float):
            kwargs["type"] = item
            kwargs.setdefault("metavar", "INT" if item is int else "NUMBER")
        else:
            kwargs["type"] = str
            kwargs.setdefault("metavar", "PREFIX" if name.endswith("prefix") else "URL" if name == "artifact_root"
                              else name.upper().replace("_", "-"))
        bounds = _bounds(field)
        if bounds:
            help_parts.append(f"({bounds})")
        default = _default_text(field)
        if default == "required":
            kwargs["required"] = True
        elif default:
            help_parts.append(f"[{default}]")
        kwargs["help"] = " ".join(p for p in help_parts if p).replace("%", "%%")
        target.add_argument(option, **kwargs)
        specs.append(_Spec(path, option, dest))
    return specs


def values_from_args(specs: list[_Spec], args: argparse.Namespace) -> dict:
    """Nested dict of the options the user set (unset ones are left to the model's defaults)."""
    out: dict = {}
    for spec in specs:
        value = getattr(args, spec.dest, None)
        if value is None:
            continue
        node = out
        for part in spec.path[:-1]:
            node = node.setdefault(part, {})
        node[spec.path[-1]] = value
    return out


def _option_for(loc: tuple, specs: list[_Spec]) -> str:
    path = tuple(str(p) for p in loc if not isinstance(p, int))
    for spec in specs:
        if spec.path == path:
            return spec.option
    return ".".join(path)


def one_line_errors(exc: ValidationError, specs: list[_Spec]) -> str:
    """'--steps: Input should be greater than or equal to 1 (got 0); ...' naming options, not field paths."""
    parts = []
    for err in exc.errors(include_url=False):
        where = _option_for(tuple(err.get("loc", ())), specs)
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        got = err.get("input")
        got_text = "" if isinstance(got, dict) or got is None else f" (got {mask_secrets(repr(got))})"
        parts.append(f"{where}: {msg}{got_text}" if where else f"{msg}{got_text}")
    return "; ".join(parts)


class ParamsError(ValueError):
    """Invalid parameters; the message is already one line naming the options."""


def model_from_args(model: type[BaseModel], specs: list[_Spec], args: argparse.Namespace, **overrides):
    values = values_from_args(specs, args)
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ParamsError(one_line_errors(exc, specs)) from None


def show_values(parser: argparse.ArgumentParser, specs: list[_Spec], values: dict) -> None:
    """Rewrite each option's '[default: ...]' in --help to the value at its path in `values` (a preset's)."""
    by_dest = {a.dest: a for a in parser._actions}
    for spec in specs:
        node = values
        for part in spec.path:
            node = node.get(part) if isinstance(node, dict) else None
        action = by_dest.get(spec.dest)
        if action is None or action.help is None or isinstance(node, dict):
            continue
        text = value_text(node)
        base = action.help.rsplit(" [default: ", 1)[0]
        action.help = f"{base} [{text.replace('%', '%%')}]" if text else base
