"""Typed pass options: parse user strings into a pass's frozen ``Options`` dataclass and back.

Keys are written with dashes on the command line (``per-channel``) and map to fields with
underscores. Supported field types: bool, int, float, str, Literal[...], tuple[int|float|str, ...]
and ``X | None``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin

from .errors import UsageError


def key_of(field_name: str) -> str:
    return field_name.replace("_", "-")


def option_fields(options_cls: type) -> list[tuple[str, Any, Any, str]]:
    """(user key, type, default, help) for each field, in declaration order."""
    hints = typing.get_type_hints(options_cls)
    out = []
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append((key_of(f.name), hints[f.name], default, f.metadata.get("help", "")))
    return out


def describe_type(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return describe_type(inner[0]) + " or none"
    if origin is tuple:
        return f"list of {describe_type(get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def convert(value: str | bool, tp: Any, where: str) -> Any:
    """Turn a user string (or bare-key ``True``) into a value of ``tp``, or explain why not."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, str) and value.lower() in ("none", "null"):
            return None
        inner = [a for a in get_args(tp) if a is not type(None)]
        return convert(value, inner[0], where)
    if tp is bool:
        if value is True:
            return True
        low = str(value).lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise UsageError(f"{where}: expected true or false, got '{value}'")
    if value is True:
        raise UsageError(f"{where}: needs a value ({describe_type(tp)})")
    if origin is Literal:
        choices = get_args(tp)
        for choice in choices:
            if str(choice) == value:
                return choice
        raise UsageError(f"{where}: '{value}' is not one of {', '.join(map(str, choices))}")
    if origin is tuple:
        item = get_args(tp)[0]
        parts = [p for p in value.split(",") if p != ""]
        return tuple(convert(p, item, where) for p in parts)
    if tp is int:
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"{where}: expected an integer, got '{value}'") from None
    if tp is float:
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"{where}: expected a number, got '{value}'") from None
    if tp is str:
        return value
    raise UsageError(f"{where}: unsupported option type {tp}")


def format_value(value: Any) -> str:
    """Canonical text of a value; ``convert(format_value(v)) == v``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value) if value else '""'  # empty list stays parseable
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if any(ch in text for ch in ' {}()"=,') or text == "":
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def build(options_cls: type, given: dict[str, str | bool], owner: str) -> Any:
    """Instantiate ``options_cls`` from user key/values; unknown keys list the valid ones."""
    fields = {key: (tp, name) for (key, tp, _, _), name in
              zip(option_fields(options_cls), (f.name for f in dataclasses.fields(options_cls)))}
    kwargs = {}
    for key, raw in given.items():
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise UsageError(f"{owner}: unknown option '{key}' (valid: {valid})")
        tp, name = fields[key]
        kwargs[name] = convert(raw, tp, f"{owner}{{{key}}}")
    try:
        return options_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{owner}: {exc}") from None


def as_pairs(options: Any) -> tuple[tuple[str, Any], ...]:
    """All fields as (user key, value) pairs, in declaration order."""
    return tuple((key_of(f.name), getattr(options, f.name)) for f in dataclasses.fields(options))
