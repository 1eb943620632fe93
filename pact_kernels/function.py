"""The autograd Function shared by the fused backends (``torch``, ``triton``, ``cuda``).

A fused backend exposes ``forward_with_grad(logits, labels, ref_full, ref_post,
safety_ids, safety_weights, answer_pos, cfg, chunk_rows=None, inplace_grad=False)``
returning ``(loss, ce, kl, gate, num_rows, grad, ce_rows, kl_rows)``: the
gradient of the loss with respect to the logits is made during the forward,
and backward only scales it. ``grad`` has the logits' shape and the dtype
:func:`pact_kernels.precision.held_gradient_dtype` gives (float32 for float16
logits). ``ce_rows``/``kl_rows`` (float32 ``[rows]``, 0 on
ignored rows) may be left out; the per-row fields of the output are then None.
"""
from __future__ import annotations

import importlib

import torch

from .nonfinite import nonfinite_to_nan
from .precision import autocast_off

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

    Only ``loss`` is differentiable, with respect to ``logits``. Backward
    multiplies the gradient buffer in place by the incoming gradient (a loss
    scale, ``1/accumulation``) and returns it in the logits' dtype (a float32
    buffer of float16 logits is cast after the multiplication, into a new
    tensor). On a device it always multiplies (testing the incoming gradient
    against 1 would synchronise with the host); on the CPU a 1 leaves the
    buffer as it is. After a multiplication in place, a second backward raises.
    Autocast is off inside (:mod:`pact_kernels.precision`).
    """

    @staticmethod
    def forward(ctx, logits, labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos, cfg, backend="torch",
                chunk_rows=None, inplace_grad=False):
        forward_with_grad = fused_forward(backend)
        with autocast_off(logits.device.type):
            loss, ce, kl, gate, n, grad, *per_row = forward_with_grad(
                logits, labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos, cfg,
                chunk_rows=chunk_rows, inplace_grad=inplace_grad,
            )
        ce_rows, kl_rows = per_row if per_row else (None, None)
        loss, ce, kl, ce_rows, kl_rows = nonfinite_to_nan(loss, ce, kl, ce_rows, kl_rows, labels != cfg.ignore_index)
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
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
        if grad.dtype == ctx.logits_dtype:
            # A 1 on the CPU is read for free and leaves the buffer as it is (repeated backward, gradcheck);
            # on a device, reading it would stall the host, so the buffer is always multiplied there.
            if grad_loss.device.type != "cpu" or not bool(grad_loss == 1):
                grad.mul_(grad_loss)
                ctx.scaled = True
        else:  # float32 held for float16 logits: scaled in float32, then rounded once
            grad = torch.mul(grad, grad_loss, out=torch.empty_like(grad, dtype=ctx.logits_dtype))
        return grad, None, None, None, None, None, None, None, None, None, None
