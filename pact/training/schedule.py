"""The learning-rate schedule of ``pact train``: the same factors as ``transformers``' schedulers.

``lr(step) = learning_rate · lr_factor(step)`` for optimizer steps ``step = 0, 1, …, total − 1``,
with ``W = warmup_steps`` and ``T = total_steps``:

* warm-up, ``step < W``: ``step / W`` (the first step runs at learning rate 0, as in
  ``transformers.get_scheduler``, which TRL, the HF Trainer and the baselines' public code use);
* then, with ``progress = (step − W) / max(1, T − W)``: ``constant`` 1, ``linear``
  ``max(0, 1 − progress)``, ``cosine`` ``½ (1 + cos(π · progress))``.

``constant`` with ``W > 0`` is ``transformers``' ``constant_with_warmup`` (its ``constant``
ignores the warm-up); :func:`hf_scheduler_type` names it, so that the driver and
:class:`pact.trl.PACTTrainer` step with the same learning rates.
"""
from __future__ import annotations

import math
from typing import Callable

__all__ = ["SCHEDULES", "hf_scheduler_type", "lr_factor", "lr_lambda"]

SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(schedule: str, warmup_steps: int, total_steps: int, step: int) -> float:
    """The factor on the learning rate at optimizer step ``step`` (0-based)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_scheduler={schedule!r}: use one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return 1.0


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """:func:`lr_factor` as the ``lr_lambda`` of :class:`torch.optim.lr_scheduler.LambdaLR`."""
    lr_factor(schedule, warmup_steps, total_steps, 0)  # validates the name now, not at the first step
    return lambda step: lr_factor(schedule, warmup_steps, total_steps, step)


def hf_scheduler_type(schedule: str, warmup_steps: int) -> str:
    """The ``lr_scheduler_type`` of ``transformers`` with the same factors as :func:`lr_factor`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_scheduler={schedule!r}: use one of {', '.join(SCHEDULES)}")
    return "constant_with_warmup" if schedule == "constant" and warmup_steps > 0 else schedule
