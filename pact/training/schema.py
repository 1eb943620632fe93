"""Configs from plain values, driven by their dataclass fields: each field's type says how a YAML or
``key=value`` value is read, its ``metadata["help"]`` documents it (``pact train --help``).

:func:`from_mapping` builds a config from a mapping of keys (a YAML file with its overrides applied),
refusing unknown keys (naming the closest known one) and any value that is not of the key's type:
booleans are ``true``/``false`` only, whole numbers whole, numbers finite (NaN and infinity are refused
naming the key), lists and mappings may also be written as ``a,b`` and ``name=column,name=column``. A field
whose type is a dataclass is a nested mapping (``loss: {lambda_kl: 3}``, ``loss.lambda_kl=3``).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import textwrap
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """The training configuration is invalid (raised before any model is loaded)."""


def field_types(cls) -> dict[str, Any]:
    """``{field name: resolved type}`` of a dataclass (its annotations may be strings)."""
    return typing.get_type_hints(cls)


def nested_fields(cls) -> tuple[str, ...]:
    """The fields of ``cls`` that are dataclasses themselves (nested mappings)."""
    return tuple(name for name, kind in field_types(cls).items() if dataclasses.is_dataclass(kind))


def from_mapping(cls, raw: dict, prefix: str = ""):
    """``cls(**raw)`` with every value read as its field's type; :class:`ConfigError` naming the key otherwise."""
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [key for key in raw if key not in known]
    if unknown and prefix:
        raise ConfigError(f"{prefix[:-1]} has unknown key(s) {sorted(unknown)}; known: {', '.join(known)}")
    if unknown:
        hint = difflib.get_close_matches(unknown[0], known, n=1)
        raise ConfigError(f"unknown config key {unknown[0]!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    kinds = field_types(cls)
    return cls(**{key: coerce(prefix + key, kinds[key], value) for key, value in raw.items()})


def coerce(key: str, kind, value):
    """``value`` as type ``kind`` (the field of config key ``key``); :class:`ConfigError` naming the key."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if value is None and len(members) < len(args):
            return None
        if len(members) == 1:
            return coerce(key, members[0], value)
        if not isinstance(value, tuple(typing.get_origin(m) or m for m in members)):
            raise ConfigError(f"{key}={value!r} must be a file path or a mapping")
        return value
    if value is None:
        raise ConfigError(f"{key} cannot be null")
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            first = dataclasses.fields(kind)[0].name
            raise ConfigError(f"{key}={value!r} must be a mapping (e.g. {key}.{first}=1)")
        return from_mapping(kind, value, prefix=f"{key}.")
    reader = _READERS.get(origin or kind)
    if reader is None:
        raise TypeError(f"config key {key}: no reader for the type {kind}")
    return reader(key, value, args)


def _bool(key: str, value, args) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    return value


def _number(key: str, value):
    """YAML reads ``3e-5`` as a string (no dot): numbers are turned back into numbers."""
    if isinstance(value, str):
        try:
            return int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} is not a number") from None
    return value


def finite(key: str, value):
    """``value`` when it is a finite number; NaN and infinity are refused naming the key."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
        raise ConfigError(f"{key}={value} is not a finite number; give a finite value (NaN would turn the check or "
                          "operation that reads it off silently)")
    return value


def _int(key: str, value, args) -> int:
    value = _number(key, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ConfigError(f"{key}={value!r} must be a whole number")
    return int(value)


def _float(key: str, value, args):
    """A number (an integer stays one: ``3`` and ``3.0`` are recorded as given)."""
    value = _number(key, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r} must be a number")
    return finite(key, value)


def _str(key: str, value, args) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}={value!r} must be text (quote it in YAML)")
    return value


def _list(key: str, value, args) -> list:
    """A list given as a list, one value (``q_proj``) or comma-separated values (``q_proj,v_proj``)."""
    items = ([v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else
             list(value) if isinstance(value, (list, tuple)) else [value])
    if args and args[0] is float:
        items = [_number(key, v) for v in items]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            raise ConfigError(f"{key}={value!r}: each item must be a number, e.g. {key}=[0.9,0.999]")
        return [finite(key, float(v)) for v in items]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ConfigError(f"{key}={value!r} must be a list of names, e.g. {key}=[q_proj,v_proj]")
    return items


def _dict(key: str, value, args) -> dict:
    """A mapping given as a mapping or as ``a=b,c=d`` text; keys and values as text."""
    if isinstance(value, str):
        out = {}
        for item in (v for v in value.split(",") if v.strip()):
            k, sep, v = item.partition("=")
            if not sep or not k.strip() or not v.strip():
                raise ConfigError(f"{key}={value!r}: write it as name=column,name=column (e.g. "
                                  f"{key}=question=q,answer=a) or as a YAML mapping")
            out[k.strip()] = v.strip()
        value = out
    if not isinstance(value, dict):
        raise ConfigError(f"{key}={value!r} must be a mapping, e.g. {key}=question=q,answer=a")
    return {str(k): str(v) for k, v in value.items()}


_READERS = {bool: _bool, int: _int, float: _float, str: _str, list: _list, dict: _dict}


def _type_name(kind) -> str:
    text = getattr(kind, "__name__", None) if not typing.get_args(kind) else None
    return text or str(kind).replace("typing.", "").replace("NoneType", "null")


def describe(cls, prefix: str = "", width: int = 100) -> str:
    """Every key of ``cls`` with its type, default and ``help`` text (nested dataclasses as ``prefix.key``)."""
    lines = []
    kinds = field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if dataclasses.is_dataclass(kinds[f.name]):
            lines.append(describe(kinds[f.name], f"{prefix}{f.name}.", width))
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = "null" if default is None else repr(default)
        lines.append(f"  {prefix}{f.name} ({_type_name(kinds[f.name])}, default {shown})")
        lines += textwrap.wrap(f.metadata.get("help", ""), width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)
