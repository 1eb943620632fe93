"""Fused linear cross-entropy: plain CE straight from hidden states and the output head.

The head runs chunk by chunk as for the PACT loss
(:class:`pact_kernels.linear_head.HeadPass`); each chunk's CE and its
gradient ``(softmax(z) − onehot(y))/n_chunk`` come from a CE-only kernel
(:func:`pact_kernels.backends.cross_entropy_forward`): the ``torch`` backend's
row blocks, or the Triton kernel ``cross_entropy_kernel`` (``triton``, and
``cuda``, which has no CUDA C++ CE kernel of its own).
"""
from __future__ import annotations

import torch

from .backends import cross_entropy_forward
from .checks import check_index_vector, labels_outside_vocabulary
from .fused_linear import fused_backend
from .linear_head import HeadOptions, HeadPass, check_head, hand_over_gradients, keep_gradients
from .nonfinite import nonfinite_to_nan
from .output import PACTLossOutput
from .precision import autocast_off, head_compute_dtype


def linear_cross_entropy_with_grad(hidden, weight, bias, labels: torch.Tensor, ignore_index: int,
                                   options: HeadOptions, needs=(True, True, True)):
    """``(loss, ce_rows, n, (d_hidden, d_weight, d_bias))`` in one pass over row chunks (inputs checked).

    ``loss = Σ w·CE / n`` over the labelled rows (w = 1 without
    ``options.row_weight``), float32 (float64 for float64 inputs); ``ce_rows``
    ``[rows]`` float32 (0 on unlabelled rows); gradients as
    :func:`pact_kernels.fused_linear.linear_forward_with_grad`'s.
    """
    compute = head_compute_dtype(hidden, weight)
    with autocast_off(hidden.device.type):
        labelled = labels != ignore_index
        head = HeadPass(compute, hidden, weight, bias, options, labelled, needs)
        kernel = cross_entropy_forward(options.backend)
        ce_rows = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        total = torch.zeros((), dtype=head.wide, device=hidden.device)
        for sl, h, z in head.chunks():
            ce_c, n_c, g = kernel(z, labels[sl], ignore_index, inplace_grad=True)  # ce_c: float32 or float64
            ce_rows[sl] = ce_c
            weights_c = None if options.row_weight is None else options.row_weight(ce_rows[sl], sl).to(head.wide)
            total += ce_c.to(head.wide).sum() if weights_c is None else (weights_c * ce_c.to(head.wide)).sum()
            head.backward_chunk(sl, h, g, n_c.clamp_min(1).to(head.wide), weights_c)
            del z, g
        loss, _, _, ce_rows, _ = nonfinite_to_nan(total * head.inv_n, total, total, ce_rows, None, labelled)
        return loss, ce_rows, head.n, head.gradients()


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """``loss, ce_rows, num_rows = FusedLinearCrossEntropyFunction.apply(hidden, weight, bias, labels,
    ignore_index, options)``; gradients as :class:`pact_kernels.fused_linear.FusedLinearPACTFunction`'s."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index: int, options: HeadOptions):
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        loss, ce_rows, n, grads = linear_cross_entropy_with_grad(hidden, weight, bias, labels, ignore_index,
                                                                 options, needs)
        return keep_gradients(ctx, grads, hidden, weight, bias, loss, ce_rows, n)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *unused):
        return (*hand_over_gradients(ctx, grad_loss, "fused_linear_cross_entropy"), None, None, None)


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
    chunk_rows: int | None = None,
    row_weight=None,
) -> PACTLossOutput:
    """Mean cross-entropy of ``hidden @ weight.T (+ bias)`` over the labelled rows, chunked through the head
    as :func:`pact_kernels.fused_linear_pact_loss` is, with a CE-only kernel.

    Args:
        hidden: ``[rows, H]``; weight: ``[V, H]``; labels: ``[rows]`` int
            (``ignore_index`` rows count for nothing); bias ``[V]``, softcap,
            backend, chunk_rows: as :func:`fused_linear_pact_loss`.
        row_weight: None, or ``f(ce_rows, rows) -> weights``: given a chunk's
            ``[c]`` float32 per-row CE and its ``slice`` of rows, the ``[c]``
            detached weights w; the loss is then ``Σ w·CE / n`` (constrained SFT's
            token weights, which depend on the policy's own CE).

    Returns:
        :class:`PACTLossOutput`: ``loss`` (differentiable), ``ce`` (= loss),
        ``ce_rows`` ``[rows]`` float32, ``num_rows``; ``kl``/``kl_rows``/``gate`` zero.
    """
    options = HeadOptions(softcap=softcap, backend=backend, chunk_rows=chunk_rows, row_weight=row_weight)
    check_head(hidden, weight, bias, options)
    check_index_vector("labels", labels, hidden.shape[0], hidden.device)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise ValueError(f"ignore_index={ignore_index!r} must be an int (usually -100)")
    _check_labels(labels, weight.shape[0], ignore_index)
    options = HeadOptions(None if softcap is None else float(softcap), fused_backend(backend, hidden), chunk_rows,
                          None, row_weight)
    loss, ce_rows, n = FusedLinearCrossEntropyFunction.apply(hidden, weight, bias, labels, ignore_index, options)
    zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
    rows = torch.zeros_like(ce_rows)
    return PACTLossOutput(loss=loss, ce=loss.detach(), kl=zero, gate=rows, num_rows=n, ce_rows=ce_rows,
                          kl_rows=rows.clone())


def _check_labels(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Labels in ``[0, V)`` on the labelled rows (one host transfer)."""
    labelled = labels != ignore_index
    if bool((labelled & ((labels < 0) | (labels >= vocab))).any()):
        raise ValueError(labels_outside_vocabulary(vocab, ignore_index))
