"""The prologue and epilogue every backend shares: labelled rows, gradient buffer, means, non-finite policy."""
from __future__ import annotations

import torch

from ..config import PACTConfig
from ..nonfinite import nonfinite_to_nan
from ..output import KernelResult
from ..precision import held_gradient_dtype


def count_labelled(labels: torch.Tensor, ignore_index: int, dtype: torch.dtype):
    """``(labelled [rows] bool, n int64 scalar, 1/max(n, 1) in dtype)``, on the device, no host synchronisation."""
    labelled = labels != ignore_index
    n = labelled.sum()
    return labelled, n, 1.0 / n.clamp_min(1).to(dtype)


def writes_in_place(z: torch.Tensor, inplace_grad: bool) -> bool:
    """True when the gradient goes into ``z`` itself: asked for, and ``z``'s dtype holds it (not float16)."""
    return inplace_grad and held_gradient_dtype(z.dtype) == z.dtype


def gradient_buffer(z: torch.Tensor, inplace_grad: bool, memory_format=torch.preserve_format) -> torch.Tensor:
    """``[rows, V]`` buffer for ``d loss / d z``: ``z`` itself (:func:`writes_in_place`), else a new tensor of
    :func:`pact_kernels.precision.held_gradient_dtype`."""
    if writes_in_place(z, inplace_grad):
        return z
    return torch.empty_like(z, dtype=held_gradient_dtype(z.dtype), memory_format=memory_format)


def finish(ce_rows: torch.Tensor, kl_rows: torch.Tensor, gate: torch.Tensor, labelled: torch.Tensor,
           n: torch.Tensor, cfg: PACTConfig, grad: torch.Tensor | None = None) -> KernelResult:
    """The epilogue: per-row terms zeroed off the labelled rows, their means over the ``n`` labelled rows,
    ``loss = ce + λ·kl``, and the non-finite policy (:mod:`pact_kernels.nonfinite`).

    ``ce_rows``, ``kl_rows``, ``gate``: ``[rows]`` in the accumulation dtype
    (float32, float64 for float64 logits); the sums run in it. Differentiable
    (the naive backend calls it on its autograd graph).
    """
    ce_rows = torch.where(labelled, ce_rows, 0)
    kl_rows = torch.where(labelled, kl_rows, 0)
    denominator = n.clamp_min(1).to(ce_rows.dtype)
    ce = ce_rows.sum() / denominator
    kl = kl_rows.sum() / denominator
    loss = ce + cfg.lambda_kl * kl
    loss, ce, kl, ce_rows, kl_rows = nonfinite_to_nan(loss, ce, kl, ce_rows, kl_rows, labelled)
    gate = torch.where(labelled, gate, 0).float()
    return KernelResult(loss, ce, kl, gate, n, grad, ce_rows.float(), kl_rows.float())
