"""The autograd Function shared by the fused backends (``torch``, ``triton``, ``cuda``).

A fused backend exposes ``forward_with_grad(logits, labels, ref_full, ref_post,
safety_ids, safety_weights, answer_pos, cfg, chunk_rows=None, inplace_grad=False)``
returning ``(loss, ce, kl, gate, num_rows, grad, ce_rows, kl_rows)``: the
gradient of the loss with respect to the logits is made during the forward,
and backward only scales it. ``ce_rows``/``kl_rows`` (float32 ``[rows]``, 0 on
ignored rows) may be left out; the per-row fields of the output are then None.
"""
from __future__ import annotations

import importlib

import torch

from .nonfinite import nonfinite_to_nan

FUSED_BACKENDS = {
    "torch": "pact_kernels.torch_backend",
    "triton": "pact_kernels.triton_backend",
    "cuda": "pact_kernels.cuda_backend",
}


def fused_forward(backend: str):
    """The ``forward_with_grad`` of a fused backend, imported on first use."""
    try:
        module_name = FUSED_BACKENDS[backend]
    except KeyError:
        raise ValueError(f"backend={backend!r} is not a fused backend; use one of {', '.join(FUSED_BACKENDS)}") from None
    return importlib.import_module(module_name).forward_with_grad


class PACTLossFunction(torch.autograd.Function):
    """``loss, ce, kl, gate, num_rows, ce_rows, kl_rows = PACTLossFunction.apply(
    logits, labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos,
    cfg, backend, chunk_rows, inplace_grad)``.

    Only ``loss`` is differentiable, with respect to ``logits``. The gradient
    buffer is scaled in place by the incoming gradient when it is not 1 (loss scaling,
    gradient accumulation); after that, a second backward raises.
    """

    @staticmethod
    def forward(ctx, logits, labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos, cfg, backend="torch",
                chunk_rows=None, inplace_grad=False):
        forward_with_grad = fused_forward(backend)
        loss, ce, kl, gate, n, grad, *per_row = forward_with_grad(
            logits, labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos, cfg,
            chunk_rows=chunk_rows, inplace_grad=inplace_grad,
        )
        ce_rows, kl_rows = per_row if per_row else (None, None)
        loss, ce, kl, ce_rows, kl_rows = nonfinite_to_nan(loss, ce, kl, ce_rows, kl_rows, labels != cfg.ignore_index)
        ctx.save_for_backward(grad)
        ctx.scaled = False
        ctx.mark_non_differentiable(*(t for t in (ce, kl, gate, n, ce_rows, kl_rows) if t is not None))
        return loss, ce, kl, gate, n, ce_rows, kl_rows

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *unused):
        if ctx.scaled:
            raise RuntimeError(
                "pact_loss: a second backward through a forward whose gradient buffer was already scaled in place; "
                "the fused backends keep one buffer. Recompute the loss, or use backend='naive' for repeated backward."
            )
        (grad,) = ctx.saved_tensors
        if not torch.equal(grad_loss, torch.ones_like(grad_loss)):
            grad.mul_(grad_loss.to(grad.dtype))
            ctx.scaled = True
        return grad, None, None, None, None, None, None, None, None, None, None
