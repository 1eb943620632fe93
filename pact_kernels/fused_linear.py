"""Fused linear PACT: the loss straight from hidden states and the output head.

``[rows, V]`` logits never exist: :class:`pact_kernels.linear_head.HeadPass`
makes them chunk by chunk (its module doc gives the dtypes and the memory),
and a fused backend's per-row kernel (:data:`pact_kernels.backends.FUSED_BACKENDS`:
``torch``, ``triton``, ``cuda``) writes each chunk's gradient into the chunk's
logits buffer (``inplace_grad``).
"""
from __future__ import annotations

import dataclasses

import torch

from .api import resolve_backend
from .backends import fused_forward
from .config import PACTConfig, resolve_config
from .inputs import PACTInputs
from .linear_head import (HeadOptions, HeadPass, ReferenceHead, check_head, check_reference_head,
                          default_chunk_rows, hand_over_gradients, keep_gradients)
from .output import KernelResult, PACTLossOutput
from .precision import autocast_off, head_compute_dtype

__all__ = ["FusedLinearPACTFunction", "FusedLinearPACTLoss", "default_chunk_rows", "fused_linear_pact_loss",
           "linear_forward_with_grad"]


def linear_forward_with_grad(hidden, weight, bias, inputs: PACTInputs, cfg: PACTConfig, options: HeadOptions,
                             needs=(True, True, True)):
    """Loss terms and the gradients of hidden / weight / bias in one pass over row chunks (inputs checked).

    Shapes as :func:`fused_linear_pact_loss`. ``needs``: which of ``(hidden,
    weight, bias)`` get a gradient. Runs with autocast off, in
    :func:`pact_kernels.precision.head_compute_dtype`.

    Returns ``(result, (d_hidden, d_weight, d_bias))``: a :class:`KernelResult`
    (``grad`` None) and the gradients, None where not needed, else in
    :func:`pact_kernels.precision.held_gradient_dtype` of their input's dtype.
    """
    compute = head_compute_dtype(hidden, weight)
    with autocast_off(hidden.device.type):
        head = HeadPass(compute, hidden, weight, bias, options, inputs.labelled(cfg.ignore_index), needs)
        forward = fused_forward(options.backend)
        rows, device = hidden.shape[0], hidden.device
        ce_rows, kl_rows, gate = (torch.zeros(rows, dtype=torch.float32, device=device) for _ in range(3))
        ce_sum, kl_sum = (torch.zeros((), dtype=head.wide, device=device) for _ in range(2))
        for sl, h, z in head.chunks():
            ref_full = head.reference_logits(sl) if options.reference is not None else inputs.ref_full[sl]
            r = forward(z, inputs.rows(sl, ref_full=ref_full), cfg, chunk_rows=None, inplace_grad=True)
            # The kernel scaled by 1/n_c; rescale to the call's 1/n on the [c, H] side.
            n_c = r.num_rows.clamp_min(1).to(head.wide)
            ce_rows[sl], kl_rows[sl], gate[sl] = r.ce_rows, r.kl_rows, r.gate
            ce_sum += r.ce * n_c
            kl_sum += r.kl * n_c
            head.backward_chunk(sl, h, r.grad, n_c)
            del z, r
        ce, kl = ce_sum * head.inv_n, kl_sum * head.inv_n
        result = KernelResult(ce + cfg.lambda_kl * kl, ce, kl, gate, head.n, None, ce_rows, kl_rows)
        return result, head.gradients()


class FusedLinearPACTFunction(torch.autograd.Function):
    """``loss, ce, kl, gate, num_rows, ce_rows, kl_rows = FusedLinearPACTFunction.apply(hidden, weight, bias,
    inputs, cfg, options)`` with ``inputs`` a :class:`PACTInputs`, ``cfg`` a :class:`PACTConfig` and
    ``options`` a :class:`pact_kernels.linear_head.HeadOptions`.

    Only ``loss`` is differentiable, with respect to ``hidden``, ``weight`` and
    ``bias``; the gradients are made in forward and backward multiplies them
    in place by the incoming gradient (no host synchronisation to test it
    against 1), casts those held in float32 for float16 inputs, and hands them
    over (a second backward raises).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, inputs: PACTInputs, cfg: PACTConfig, options: HeadOptions):
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        r, grads = linear_forward_with_grad(hidden, weight, bias, inputs, cfg, options, needs)
        return keep_gradients(ctx, grads, hidden, weight, bias,
                              r.loss, r.ce, r.kl, r.gate, r.num_rows, r.ce_rows, r.kl_rows)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *unused):
        return (*hand_over_gradients(ctx, grad_loss, "fused_linear_pact_loss"), None, None, None)


def fused_backend(backend: str, hidden) -> str:
    """The fused backend ``backend`` names for ``hidden`` (``auto`` resolved); ``naive`` is refused."""
    name = resolve_backend(backend, hidden)
    if name == "naive":
        raise ValueError("backend='naive' is not fused; for the oracle call pact_loss(hidden @ weight.T, ...) "
                         "with backend='naive', or pick torch / triton / cuda here")
    return name


def _run(hidden, weight, bias, inputs: PACTInputs, cfg: PACTConfig, options: HeadOptions) -> PACTLossOutput:
    """Check the inputs, pick the backend, apply the Function; a :class:`PACTLossOutput`."""
    check_head(hidden, weight, bias, options)
    if options.reference is not None:
        if cfg.variant != "full_vocab":
            raise ValueError(f"ref_hidden is for variant='full_vocab' only; variant={cfg.variant!r} takes the "
                             "reference logits on S as ref_full / ref_post")
        if inputs.ref_full is not None or inputs.ref_post is not None:
            raise ValueError("pass either ref_hidden (the reference head applied chunk by chunk) or ref_full, "
                             "not both; ref_post must be None with ref_hidden")
        check_reference_head(options.reference, hidden, weight)
    stand_in = hidden.new_empty(()).expand(hidden.shape[0], weight.shape[0])  # zero-stride: no [rows, V] memory
    ref_full = stand_in if options.reference is not None else inputs.ref_full
    dataclasses.replace(inputs, ref_full=ref_full).check(stand_in, cfg)
    options = dataclasses.replace(options, softcap=None if options.softcap is None else float(options.softcap),
                                  backend=fused_backend(options.backend, hidden))
    loss, ce, kl, gate, n, ce_rows, kl_rows = FusedLinearPACTFunction.apply(hidden, weight, bias, inputs, cfg, options)
    return PACTLossOutput(loss=loss, ce=ce, kl=kl, gate=gate, num_rows=n, ce_rows=ce_rows, kl_rows=kl_rows)


def _reference_head(ref_hidden, ref_weight, ref_bias) -> ReferenceHead | None:
    """The :class:`ReferenceHead` of the ``ref_*`` keywords (None without ``ref_hidden``)."""
    if ref_hidden is None:
        if ref_weight is not None or ref_bias is not None:
            raise ValueError("ref_weight / ref_bias need ref_hidden (the reference's hidden rows)")
        return None
    return ReferenceHead(ref_hidden, ref_weight, ref_bias)


def fused_linear_pact_loss(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ref_full: torch.Tensor | None,
    ref_post: torch.Tensor | None, safety_ids: torch.Tensor, safety_weights: torch.Tensor,
    answer_pos: torch.Tensor | None, *, bias: torch.Tensor | None = None, softcap: float | None = None,
    backend: str = "auto", chunk_rows: int | None = None, ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None, ref_bias: torch.Tensor | None = None,
    config: PACTConfig | None = None, **overrides,
) -> PACTLossOutput:
    """:func:`pact_kernels.pact_loss` on the logits ``hidden @ weight.T (+ bias)``, never holding them whole.

    Args:
        hidden: ``[rows, H]`` final hidden states, float32 / bfloat16 / float16 /
            float64; gets a gradient (its dtype) when it requires one.
        weight: ``[V, H]`` output embedding (``lm_head.weight``), hidden's
            device, any of those dtypes: the head computes in the autocast dtype
            when autocast is on, else in weight's dtype, hidden cast to it
            (:mod:`pact_kernels.precision`); its gradient (float32-accumulated,
            weight's dtype) is made only when it requires grad.
        labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos:
            as :func:`pact_kernels.pact_loss` (references ``[rows, K]`` or ``[rows, V]``).
        bias: optional ``[V]`` head bias (cast to the compute dtype).
        softcap: optional final-logit soft-cap > 0: the logits are ``cap·tanh(z/cap)``
            (Gemma-2); also applied to the reference logits made from ``ref_hidden``.
        backend: ``auto`` (triton on CUDA, else torch), ``torch``, ``triton``, ``cuda``.
        chunk_rows: rows per chunk (default :func:`default_chunk_rows`, from a memory budget).
        ref_hidden: ``full_vocab`` only, instead of ``ref_full``: ``[rows, H_ref]``
            reference hidden states; the reference logits
            ``ref_hidden @ ref_weight.T (+ ref_bias)`` are made chunk by chunk too.
        ref_weight: ``[V, H_ref]`` reference head (default ``weight``).
        ref_bias: ``[V]`` reference bias (default ``bias`` when ``ref_weight`` is ``weight``).
        config: a :class:`PACTConfig` (default: the paper's).
        **overrides: :class:`PACTConfig` fields set on ``config`` (``variant``, ``lambda_kl``, ...).

    Returns:
        :class:`PACTLossOutput` as :func:`pact_loss`, ``loss`` differentiable
        with respect to ``hidden``, ``weight`` and ``bias``.
    """
    cfg = resolve_config(config, overrides, "fused_linear_pact_loss",
                         ("bias", "softcap", "backend", "chunk_rows", "ref_hidden", "ref_weight", "ref_bias"))
    inputs = PACTInputs(labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos)
    options = HeadOptions(softcap, backend, chunk_rows, _reference_head(ref_hidden, ref_weight, ref_bias))
    return _run(hidden, weight, bias, inputs, cfg, options)


class FusedLinearPACTLoss(torch.nn.Module):
    """``nn.Module`` form of :func:`fused_linear_pact_loss`, holding S and the hyper-parameters.

    Args:
        safety_ids: ``[K]`` integer ids of S; safety_weights: ``[K]`` (None: ones).
        config: a :class:`PACTConfig` (default: the paper's).
        softcap, backend, chunk_rows: as :func:`fused_linear_pact_loss`.

    ``forward(hidden, weight, labels, ref_full=None, ref_post=None, answer_pos=None, bias=None,
    ref_hidden=None, ref_weight=None, ref_bias=None)`` returns :class:`PACTLossOutput`.
    """

    def __init__(self, safety_ids, safety_weights=None, config: PACTConfig | None = None,
                 softcap: float | None = None, backend: str = "auto", chunk_rows: int | None = None):
        super().__init__()
        ids = torch.as_tensor(safety_ids, dtype=torch.long)
        weights = torch.ones(ids.shape) if safety_weights is None else torch.as_tensor(safety_weights,
                                                                                        dtype=torch.float32)
        self.register_buffer("safety_ids", ids)
        self.register_buffer("safety_weights", weights.float())
        self.config = config or PACTConfig()
        self.softcap, self.backend, self.chunk_rows = softcap, backend, chunk_rows

    def forward(self, hidden, weight, labels, ref_full=None, ref_post=None, answer_pos=None, bias=None,
                ref_hidden=None, ref_weight=None, ref_bias=None) -> PACTLossOutput:
        inputs = PACTInputs(labels, ref_full, ref_post, self.safety_ids, self.safety_weights, answer_pos)
        options = HeadOptions(self.softcap, self.backend, self.chunk_rows,
                              _reference_head(ref_hidden, ref_weight, ref_bias))
        return _run(hidden, weight, bias, inputs, self.config, options)

    def extra_repr(self) -> str:
        return f"k={self.safety_ids.numel()}, softcap={self.softcap}, backend={self.backend!r}, config={self.config}"
