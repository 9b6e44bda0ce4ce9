"""Typed option records built from plain mappings, with one-line errors that say where and how to fix.

Recipes, distiller options and data-set options are all dataclasses; `build(cls, mapping, where)` is the
one place that checks keys (nearest valid key suggested), types, choices and ranges. A field states its
range in its metadata: `field(default=..., metadata={"min": 0})` ("gt" for a strict bound, "max" for an upper
one, "why" for the reason shown when a value is refused). NaN and infinity are refused everywhere, and so is a
float beyond +-1e6 in a field with no "max" of its own: no weight, temperature or rate means that, and a typo there
(kd.T=1e300) would only surface as a failed loss in the first step.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Mapping, Union

from kd.errors import KDError
from kd.registry import nearest


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        key, value = typing.get_args(tp)
        return f"a mapping of {_type_name(key)} to {_type_name(value)}"
    if tp is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


_NO = object()


def _coerce(tp: Any, value: Any) -> Any:
    """Return `value` as type `tp`, or _NO when it does not fit."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            out = _coerce(arg, value)
            if out is not _NO:
                return out
        return _NO
    if origin is Literal:
        return value if value in typing.get_args(tp) else _NO
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return _NO
        items = [_coerce(typing.get_args(tp)[0], v) for v in value]
        return _NO if any(i is _NO for i in items) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            return _NO
        if origin is None:
            return dict(value)
        key_type, value_type = typing.get_args(tp)
        items = {_coerce(key_type, k): _coerce(value_type, v) for k, v in value.items()}
        return _NO if _NO in items or any(v is _NO for v in items.values()) else items
    if tp is type(None):
        return None if value is None else _NO
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if tp is float:
        if isinstance(value, bool):
            return _NO
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML reads 5e-4 as a string; accept what is clearly a number
            try:
                return float(value)
            except ValueError:
                return _NO
        return _NO
    if tp is str:
        return value if isinstance(value, str) else _NO
    return value


LARGEST = 1e6  # the bound of a float field that states no "max"


def _check_range(name: str, value: Any, meta: Mapping, where: str) -> None:
    """Refuse NaN and infinity everywhere, and values outside the field's min / gt / max (with its `why`)."""
    values = _numbers(value)
    why = f" ({meta['why']})" if "why" in meta else ""
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise KDError(f"{where}: '{name}' is {v}, but it must be a finite number")
        if "min" in meta and v < meta["min"]:
            raise KDError(f"{where}: '{name}' is {v}, but it must be >= {meta['min']}{why}")
        if "gt" in meta and v <= meta["gt"]:
            raise KDError(f"{where}: '{name}' is {v}, but it must be > {meta['gt']}{why}")
        if "max" in meta and v > meta["max"]:
            raise KDError(f"{where}: '{name}' is {v}, but it must be <= {meta['max']}{why}")
        if isinstance(v, float) and "max" not in meta and abs(v) > LARGEST:
            raise KDError(f"{where}: '{name}' is {v}, far outside any sensible range (at most {LARGEST:g} in size); "
                          f"check the value")


def _numbers(value: Any) -> list:
    """Every int or float in a value, lists of lists and a mapping's values included (bools are not numbers here)."""
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def build(cls: type, data: Mapping[str, Any] | None, where: str, lines: Mapping[str, int] | None = None,
          prefix: str = ""):
    """Build dataclass `cls` from `data`, refusing unknown keys, wrong types and values out of range.

    `where` names the source for messages (a file); `lines` maps dotted keys to their line numbers;
    `prefix` is the dotted path of `data` inside the file (e.g. "kd." for a distiller's section).
    """
    data = dict(data or {})
    lines = lines or {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}

    def at(key: str) -> str:
        return f"{where}:{lines[prefix + key]}" if prefix + key in lines else where

    for key in data:
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise KDError(f"{at(key)}: unknown key '{prefix}{key}'{nearest(str(key), fields)}; valid keys: {valid}")
    values = {}
    for name, value in data.items():
        out = _coerce(hints[name], value)
        if out is _NO:
            raise KDError(f"{at(name)}: '{prefix}{name}' must be {_type_name(hints[name])}, got {value!r}")
        _check_range(prefix + name, out, fields[name].metadata, at(name))
        values[name] = out
    return cls(**values)


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for every field, for `run_kd.py list` and docs."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def as_dict(obj) -> dict:
    return dataclasses.asdict(obj)
