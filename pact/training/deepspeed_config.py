"""The run's DeepSpeed config: the JSON file (a key given twice is refused) with the run's batch sizes,
precision and clipping filled in."""
from __future__ import annotations

import json
from pathlib import Path

from .schema import ConfigError


def _unique_pairs(where: str):
    """A ``json`` ``object_pairs_hook`` that refuses a key given twice in one object."""
    def hook(pairs):
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ConfigError(f"{where}: key {twice[0]!r} appears twice in one object; keep one")
        return dict(pairs)
    return hook


def read_deepspeed_json(path: str) -> dict:
    """The DeepSpeed JSON at ``path``; :class:`ConfigError` naming the file when it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"deepspeed config not found: {path}")
    try:
        ds = json.loads(p.read_text(), object_pairs_hook=_unique_pairs(f"deepspeed={path}"))
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"deepspeed={path} is not valid JSON: {e}") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"deepspeed={path} must hold a JSON object (a mapping of DeepSpeed keys)")
    return ds


def deepspeed_config(cfg, world_size: int) -> dict:
    """The DeepSpeed config of the run (``cfg``: a ``TrainConfig``): the JSON (or ZeRO 0) with this run's batch
    sizes, precision and clipping.

    ``"auto"`` values are filled in from ``cfg``; explicit values that disagree
    with ``cfg`` are an error rather than a silent choice.
    """
    if isinstance(cfg.deepspeed, dict):
        ds = json.loads(json.dumps(cfg.deepspeed))
    elif cfg.deepspeed:
        ds = read_deepspeed_json(cfg.deepspeed)
    else:
        ds = {}
    wanted = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size,
        "gradient_clipping": cfg.max_grad_norm,
    }
    for key, value in wanted.items():
        current = ds.get(key, "auto")
        if current != "auto" and current != value:
            raise ConfigError(f"deepspeed config sets {key}={current} but this run needs {value}; use \"auto\"")
        ds[key] = value
    ds.setdefault("zero_optimization", {})
    if cfg.zero_stage is not None:
        ds["zero_optimization"]["stage"] = cfg.zero_stage
    ds["zero_optimization"].setdefault("stage", 0)
    ds["bf16"] = {"enabled": cfg.dtype == "bfloat16"}
    ds.pop("fp16", None)
    ds.setdefault("steps_per_print", 10**9)  # our own logger reports
    ds.setdefault("wall_clock_breakdown", False)
    return ds
