"""A run config's text: YAML files (a key given twice is refused) and ``key=value`` / ``@FILE`` overrides."""
from __future__ import annotations

from pathlib import Path

import yaml

from .schema import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"{self.name}: key {key!r} appears twice (line {seen[key] + 1} and line "
                                  f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, name: str = "<override>"):
    loader = _UniqueKeyLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_value(text: str):
    """A command-line value: YAML scalars and lists (``3e-5``, ``true``, ``[q_proj,v_proj]``)."""
    try:
        return _load_yaml(text) if text != "" else ""
    except yaml.YAMLError:
        return text  # e.g. ``question=q,answer=a``: read as text, typed by the key


def read_yaml_mapping(path: str, missing: str) -> dict:
    """The mapping of keys of a YAML file (a run config or an ``@FILE`` overlay); ``missing``: the error if absent."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(missing)
    try:
        data = _load_yaml(p.read_text(), str(path)) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e}); "
                          "check the indentation and the `key: value` form there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    return data


def apply_overrides(raw: dict, overrides: list[str], nested: tuple[str, ...] = ()) -> dict:
    """``key=value`` (``loss.lambda_kl=1``) strings applied onto the raw YAML mapping, in order.

    ``@FILE`` applies every key of a YAML file (a recipe overlay); a key of
    ``nested`` (a mapping of keys, such as ``loss``) is merged key by key.
    """
    out = dict(raw)
    for item in overrides:
        if item.startswith("@"):
            overlay = read_yaml_mapping(item[1:], f"overlay file not found: {item[1:]} (an override @FILE names "
                                                  "a YAML file of keys)")
            for key, value in overlay.items():
                out[key] = dict(out.get(key) or {}, **value) if key in nested and isinstance(value, dict) else value
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value")
        key = key.strip().lstrip("-").replace("-", "_")
        if "." in key:
            head, sub = key.split(".", 1)
            out[head] = dict(out.get(head) or {}, **{sub: parse_value(value)})
        else:
            out[key] = parse_value(value)
    return out
