"""Range checks of the training config: numeric bounds of its keys and the mixture's integer counts."""
from __future__ import annotations

import math

from .schema import ConfigError


def harmful_counts(n: int, p: float) -> tuple[int, int]:
    """``(harmful, task)``: the integer counts of a mixture of ``n`` samples with harmful share ``p``."""
    harmful = round(n * p)
    return harmful, n - harmful


def check_harmful_counts(n: int, p: float) -> None:
    """Refuse a share that rounds a kind away entirely (p > 0 with 0 harmful samples, p < 1 with 0 task ones)."""
    harmful, task = harmful_counts(n, p)
    if (p > 0 and harmful == 0) or (p < 1 and task == 0):
        kind = "harmful" if p > 0 and harmful == 0 else "task"
        need = next(m for m in range(n + 1, 10 * n + 10**6) if min(harmful_counts(m, p)) > 0)
        raise ConfigError(f"num_samples={n} with harmful_fraction={p} gives {harmful} harmful and {task} task "
                          f"samples: n·p = {n * p:g} rounds the {kind} samples away; raise num_samples to at least "
                          f"{need}, or set harmful_fraction={0 if kind == 'harmful' else 1} if that is meant")


def describe_harmful_counts(n: int, p: float) -> str:
    """The exact mixture counts in words ("4 harmful of 40 (p = 0.1)"; a rounded share says so)."""
    harmful, task = harmful_counts(n, p)
    exact = math.isclose(harmful, n * p, abs_tol=1e-9)
    share = f"p = {p:g}" if exact else f"p = {harmful}/{n} = {harmful / n:.4g}, harmful_fraction={p:g} rounded"
    return f"{harmful} harmful and {task} task samples ({share})"

#: Numeric bounds of the keys checked by :func:`check_ranges`: (low, high, low open, high open); None: no bound.
RANGES = {
    "num_samples": (1, None, False, False), "epochs": (1, None, False, False),
    "micro_batch_size": (1, None, False, False), "gradient_accumulation_steps": (1, None, False, False),
    "max_length": (2, None, False, False), "lora_r": (1, None, False, False), "log_every": (1, None, False, False),
    "lora_alpha": (0, None, True, False), "lora_dropout": (0, 1, False, True),
    "learning_rate": (0, None, True, False), "weight_decay": (0, None, False, False),
    "max_grad_norm": (0, None, False, False), "warmup_steps": (0, None, False, False),
    "max_steps": (1, None, False, False), "stop_after_steps": (1, None, False, False),
    "seed": (0, None, False, False), "save_every": (0, None, False, False),
    "keep_checkpoints": (0, None, False, False), "collective_timeout": (1, None, False, False),
}


def check_ranges(cfg) -> None:
    """Every bounded key of ``cfg`` (a TrainConfig) inside its bounds (:data:`RANGES`), and ``adam_betas`` two values in [0, 1)."""
    for name, (lo, hi, lo_open, hi_open) in RANGES.items():
        v = getattr(cfg, name)
        if v is None:
            continue
        low_bad = lo is not None and (v <= lo if lo_open else v < lo)
        high_bad = hi is not None and (v >= hi if hi_open else v > hi)
        if low_bad or high_bad:
            bound = " and ".join(b for b in (
                f"{'>' if lo_open else '>='} {lo}" if lo is not None else "",
                f"{'<' if hi_open else '<='} {hi}" if hi is not None else "") if b)
            extra = {"max_steps": " (or null: the whole schedule)", "save_every": " (0: only at the end)",
                     "max_grad_norm": " (0: no clipping)", "keep_checkpoints": " (0: keep all)"}.get(name, "")
            raise ConfigError(f"{name}={v} must be {bound}{extra}")
    if len(cfg.adam_betas) != 2 or not all(0 <= b < 1 for b in cfg.adam_betas):
        raise ConfigError(f"adam_betas={cfg.adam_betas} must be two values in [0, 1), e.g. [0.9,0.999]")


