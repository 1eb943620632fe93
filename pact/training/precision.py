"""DeepSpeed's bf16/fp16 optimizer without ZeRO made to step as the float32 optimizer does.

Without ZeRO, DeepSpeed wraps the run's AdamW under ``bf16`` (or ``fp16``) in
``FP16_UnfusedOptimizer`` (``FP16_Optimizer`` for a fused Adam), keeping float32
master weights. Its constructor allocates the optimizer state by running one
optimizer step on zero gradients. For Adam that step counts: the step
counter starts at 1, so every bias correction after it is one step late (the
first real update is 0.744·lr instead of lr at betas (0.9, 0.999)), and
AdamW decays the master weights once. A bf16 run then drifts from its
float32 run (measured on the tiny model: CE 2 % apart after 4 steps, KL
11 %; ZeRO-1/2/3, which allocate their state otherwise, stay within 0.2 %).
:func:`undo_state_allocation_step` clears that state (torch's AdamW builds
it again at the first real step) and copies the master weights back from
the model's.
"""
from __future__ import annotations

import torch

__all__ = ["undo_state_allocation_step"]

WRAPPERS = ("FP16_UnfusedOptimizer", "FP16_Optimizer")


@torch.no_grad()
def undo_state_allocation_step(engine) -> bool:
    """Undo the zero-gradient step of DeepSpeed's non-ZeRO mixed-precision optimizer (see the module doc).

    Call it right after ``deepspeed.initialize`` (a resume then loads the
    saved state over it). Returns True when there was such a step to undo.
    """
    wrapper = getattr(engine, "optimizer", None)
    if type(wrapper).__name__ not in WRAPPERS:
        return False
    inner = wrapper.optimizer
    inner.state.clear()
    if hasattr(wrapper, "fp32_groups_flat"):  # FP16_Optimizer: one flat master per group
        for master, low in zip(wrapper.fp32_groups_flat, wrapper.fp16_groups_flat):
            master.copy_(low)
    else:  # FP16_UnfusedOptimizer: a master per parameter
        for masters, lows in zip(wrapper.fp32_groups, wrapper.fp16_groups):
            for master, low in zip(masters, lows):
                master.copy_(low)
    return True
