"""The autograd Function shared by the fused backends (``torch``, ``triton``, ``cuda``).

A fused backend makes the gradient of the loss with respect to the logits
during the forward (:mod:`pact_kernels.backends`); backward only scales it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .backends import fused_forward
from .config import PACTConfig
from .inputs import PACTInputs
from .precision import autocast_off


@dataclass(frozen=True)
class KernelOptions:
    """How a fused backend runs: ``backend`` (``torch``, ``triton``, ``cuda``), ``chunk_rows`` (rows per block
    of ``torch``; None: from a memory budget), ``inplace_grad`` (the gradient into the logits' buffer)."""

    backend: str = "torch"
    chunk_rows: int | None = None
    inplace_grad: bool = False


class PACTLossFunction(torch.autograd.Function):
    """``loss, ce, kl, gate, num_rows, ce_rows, kl_rows = PACTLossFunction.apply(logits, inputs, cfg, options)``
    with ``inputs`` a :class:`PACTInputs`, ``cfg`` a :class:`PACTConfig`, ``options`` :class:`KernelOptions`.

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
    def forward(ctx, logits: torch.Tensor, inputs: PACTInputs, cfg: PACTConfig, options: KernelOptions):
        forward_with_grad = fused_forward(options.backend)
        with autocast_off(logits.device.type):
            r = forward_with_grad(logits, inputs, cfg, chunk_rows=options.chunk_rows,
                                  inplace_grad=options.inplace_grad)
        ctx.save_for_backward(r.grad)
        ctx.logits_dtype = logits.dtype
        ctx.scaled = False
        ctx.mark_non_differentiable(r.ce, r.kl, r.gate, r.num_rows, r.ce_rows, r.kl_rows)
        return r.loss, r.ce, r.kl, r.gate, r.num_rows, r.ce_rows, r.kl_rows

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
        return grad, None, None, None
