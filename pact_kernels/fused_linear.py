"""Fused linear PACT: the loss straight from hidden states and the output head.

``[rows, V]`` logits never exist. Everything runs in one compute dtype, the
autocast dtype when autocast is on, else the head weight's
(:func:`pact_kernels.precision.head_compute_dtype`): the hidden rows, the
head (and bias) are cast to it. The rows go through in chunks; for each,

1. ``z = hidden_c @ weight.T (+ bias)`` into one reused ``[chunk, V]`` buffer
   (the compute dtype), soft-capped in place (``cap·tanh(z/cap)``) when asked;
2. a fused backend's per-row kernel (:data:`pact_kernels.function.FUSED_BACKENDS`:
   ``torch``, ``triton``, ``cuda``) writes ``g = d loss_c / d z`` into that same
   buffer (``inplace_grad``; float16: into a float32 buffer, see below), times
   the soft-cap's derivative ``1 − tanh²``;
3. at once ``d hidden_c = g @ weight`` and, only when they require grad,
   ``d weight += gᵀ @ hidden_c`` and ``d bias += Σ_rows g``, accumulated in
   float32 (float64 for float64 inputs) across chunks.

Each kernel scales its chunk by ``1/n_chunk``; the factor ``n_chunk/n`` to the
whole call's ``n`` (and a row weight, see :func:`fused_linear_cross_entropy`)
is applied to the ``[chunk, H]`` side, never to the ``[chunk, V]`` buffer.
Backward multiplies the stored gradients by the incoming gradient and hands
them over (as Liger-Kernel's FLCE).

float16: the kernel's ``g`` is float32; the two gradient GEMMs take it as
float16 times ``n_chunk`` (the per-row gradient, bounded by ``1 + λ·T`` in
magnitude, so small probabilities keep float16's normal range) and divide by
it in float32. ``d hidden`` and ``d weight`` are held in float32 until
backward has multiplied them by the loss scale, then cast to their input's
dtype (:func:`pact_kernels.precision.held_gradient_dtype`).

Memory: the ``[chunk, V]`` buffers (the logits/gradient; the soft-cap's
derivative when ``softcap``; the reference logits when ``full_vocab`` takes
``ref_hidden``; the float32 gradient for float16) together hold at most
:func:`default_chunk_rows`'s budget, ``max(CHUNK_BUDGET_BYTES, bytes of
hidden)``: the head's transient memory is about that of its input. Beyond
them: ``d hidden`` (hidden's size), the float32 ``d weight`` (weight's size,
when it requires grad), the head cast to the compute dtype when it is not in
it already (autocast over a float32 head: weight's size in bfloat16, as
autocast's own ``F.linear`` makes) and the torch backend's float32 sub-blocks
(4 MiB each, :data:`pact_kernels.torch_backend.BLOCK_ELEMENTS`).
"""
from __future__ import annotations

import torch

from .config import PACTConfig
from .function import fused_forward
from .loss import resolve_backend
from .output import PACTLossOutput
from .precision import accumulate_dtype, autocast_off, head_compute_dtype, held_gradient_dtype
from .validation import check_linear_inputs

# Bytes the [chunk, V] buffers of one call may hold together, at least (32 MiB).
CHUNK_BUDGET_BYTES = 32 << 20


def default_chunk_rows(rows: int, vocab: int, hidden: torch.Tensor, buffers: int = 1,
                       dtype: torch.dtype | None = None) -> int:
    """Rows per chunk: ``buffers`` ``[chunk, V]`` buffers of ``dtype`` (default hidden's) within
    ``max(CHUNK_BUDGET_BYTES, hidden.numel()·itemsize)`` bytes; at least 1, at most ``rows``.

    At V = 49152 float32 (SmolLM2's head) that is 170 rows for one buffer; at
    V = 152064 bf16 with 16384 × 4096 hidden rows (a 128 MiB input), 441 rows.
    float16 adds the float32 gradient: two buffers' worth more.
    """
    dtype = hidden.dtype if dtype is None else dtype
    itemsize = torch.empty((), dtype=dtype).element_size()
    if held_gradient_dtype(dtype) != dtype:
        buffers += torch.empty((), dtype=held_gradient_dtype(dtype)).element_size() // itemsize
    budget = max(CHUNK_BUDGET_BYTES, hidden.numel() * hidden.element_size())
    per_row = max(1, vocab) * itemsize * buffers
    return max(1, min(max(rows, 1), budget // per_row))


def _linear_into(out: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias, softcap, deriv):
    """``out = h @ weight.T (+ bias)``, soft-capped in place; the cap's derivative ``1 − tanh²`` into ``deriv``."""
    if bias is None:
        torch.mm(h, weight.t(), out=out)
    else:
        torch.addmm(bias, h, weight.t(), out=out)
    if softcap is not None:
        out.div_(softcap).tanh_()
        if deriv is not None:
            torch.mul(out, out, out=deriv).neg_().add_(1.0)
        out.mul_(softcap)
    return out


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` with ``acc`` in float32/float64 and ``a``, ``b`` possibly lower precision.

    ``a @ b`` is one ``[V, H]`` product per chunk, rounded once to the inputs'
    dtype when that differs from ``acc``'s; the sum over chunks is in ``acc``'s dtype.
    """
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    else:
        acc.add_(torch.mm(a, b))


def linear_forward_with_grad(hidden, weight, bias, softcap, labels, ref_full, ref_post, ref_hidden, ref_weight,
                             ref_bias, safety_ids, safety_weights, answer_pos, cfg: PACTConfig, backend: str,
                             chunk_rows: int | None, needs=(True, True, True), row_weight=None):
    """Loss terms and the gradients of hidden / weight / bias in one pass over row chunks (inputs checked).

    Shapes as :func:`fused_linear_pact_loss`. ``needs``: which of ``(hidden,
    weight, bias)`` get a gradient. ``row_weight``: None, or a function
    ``(ce_rows [c] float32, rows slice) -> [c]`` detached per-row weights of the
    CE (the loss is then ``Σ w·CE / n``; used with ``lambda_kl = 0``). Runs
    with autocast off, in :func:`pact_kernels.precision.head_compute_dtype`.

    Returns ``(loss, ce, kl, gate, n, ce_rows, kl_rows, d_hidden, d_weight, d_bias)``;
    the gradients are None where not needed, else in
    :func:`pact_kernels.precision.held_gradient_dtype` of their input's dtype.
    """
    compute = head_compute_dtype(hidden, weight)
    with autocast_off(hidden.device.type):
        return _linear_forward_with_grad(
            compute, hidden, weight, bias, softcap, labels, ref_full, ref_post, ref_hidden, ref_weight, ref_bias,
            safety_ids, safety_weights, answer_pos, cfg, backend, chunk_rows, needs, row_weight)


def _linear_forward_with_grad(compute, hidden, weight, bias, softcap, labels, ref_full, ref_post, ref_hidden,
                              ref_weight, ref_bias, safety_ids, safety_weights, answer_pos, cfg: PACTConfig,
                              backend: str, chunk_rows: int | None, needs, row_weight):
    """:func:`linear_forward_with_grad` with the compute dtype chosen and autocast off."""
    rows, _ = hidden.shape
    vocab = weight.shape[0]
    forward = fused_forward(backend)
    wide = accumulate_dtype(compute)
    # float16: the kernel's gradient is float32; the gradient GEMMs take it lifted by n_chunk (see the module doc).
    lift = held_gradient_dtype(compute) != compute
    device = hidden.device
    ref_on_chunks = ref_hidden is not None
    if ref_on_chunks:
        ref_weight = weight if ref_weight is None else ref_weight
        ref_bias = bias if ref_bias is None and ref_weight is weight else ref_bias
    buffers = 1 + (softcap is not None) + ref_on_chunks
    chunk = chunk_rows or default_chunk_rows(rows, vocab, hidden, buffers, compute)
    chunk = max(1, min(chunk, rows))

    labelled = labels != cfg.ignore_index
    n = labelled.sum()
    inv_n = 1.0 / n.clamp_min(1).to(wide)
    need_h, need_w, need_b = needs
    d_hidden = torch.empty_like(hidden, dtype=held_gradient_dtype(hidden.dtype)) if need_h else None
    d_weight = torch.zeros(weight.shape, dtype=wide, device=device) if need_w else None
    d_bias = torch.zeros(vocab, dtype=wide, device=device) if need_b else None
    ce_rows = torch.zeros(rows, dtype=torch.float32, device=device)
    kl_rows = torch.zeros(rows, dtype=torch.float32, device=device)
    gate = torch.zeros(rows, dtype=torch.float32, device=device)
    ce_sum = torch.zeros((), dtype=wide, device=device)
    kl_sum = torch.zeros((), dtype=wide, device=device)

    h_all, w = hidden.detach(), weight.detach().to(compute)
    b = None if bias is None else bias.detach().to(compute)
    if ref_on_chunks:
        ref_h_all = ref_hidden.detach()
        ref_w = w if ref_weight is weight else ref_weight.detach().to(compute)
        ref_b = None if ref_bias is None else (b if ref_bias is bias else ref_bias.detach().to(compute))
    buf = torch.empty(chunk, vocab, dtype=compute, device=device)
    deriv = torch.empty_like(buf) if softcap is not None else None
    ref_buf = torch.empty(chunk, vocab, dtype=compute, device=device) if ref_on_chunks else None
    for start in range(0, rows, chunk):
        sl = slice(start, min(start + chunk, rows))
        c = sl.stop - sl.start
        h = h_all[sl].to(compute)
        z = _linear_into(buf[:c], h, w, b, softcap, None if deriv is None else deriv[:c])
        if ref_on_chunks:
            r_full = _linear_into(ref_buf[:c], ref_h_all[sl].to(compute), ref_w, ref_b, softcap, None)
        else:
            r_full = ref_full[sl]
        r_post = ref_post[sl] if ref_post is not None and cfg.uses_gate else None
        pos = answer_pos[sl] if answer_pos is not None else None
        _, ce_c, kl_c, gate_c, n_c, g, ce_rows_c, kl_rows_c = forward(
            z, labels[sl], r_full, r_post, safety_ids, safety_weights, pos, cfg, chunk_rows=None, inplace_grad=True)
        # The kernel scaled by 1/n_c; rescale to the call's 1/n on the [c, H] side.
        n_c = n_c.clamp_min(1).to(wide)
        ce_rows[sl], kl_rows[sl], gate[sl] = ce_rows_c, kl_rows_c, gate_c
        if row_weight is None:
            ce_sum += ce_c * n_c
            kl_sum += kl_c * n_c
            scale = n_c * inv_n
        else:
            weights_c = row_weight(ce_rows_c, sl).to(wide)
            ce_sum += (weights_c * ce_rows_c.to(wide)).sum()
            scale = (weights_c * n_c * inv_n)[:, None]
        if softcap is not None:
            g.mul_(deriv[:c])
        if need_b:
            d_bias.add_(torch.mv(g.t(), scale.to(g.dtype).reshape(-1).expand(c)))
        if lift:  # float32 g -> float16 per-row gradients g·n_c (times the row weight), into the spent logits buffer
            row_scale = n_c if row_weight is None else (weights_c * n_c)[:, None]
            g = torch.mul(g, row_scale.to(g.dtype), out=buf[:c])
            if need_h:
                d_hidden[sl] = torch.mm(g, w)  # times 1/n after the loop
            if need_w:
                d_weight.add_(torch.mm(g.t(), h))
        else:
            scale = scale.to(compute)
            if need_h:
                d_hidden[sl] = torch.mm(g, w).mul_(scale)
            if need_w:
                _accumulate(d_weight, g.t(), h * scale)
        del z, g
    del buf, deriv, ref_buf
    if lift:
        for grad in (d_hidden, d_weight):
            if grad is not None:
                grad.mul_(inv_n)

    ce = ce_sum * inv_n
    kl = kl_sum * inv_n
    loss = ce + cfg.lambda_kl * kl
    d_weight = None if d_weight is None else d_weight.to(held_gradient_dtype(weight.dtype))
    d_bias = None if d_bias is None else d_bias.to(held_gradient_dtype(bias.dtype))
    return loss, ce, kl, gate, n, ce_rows, kl_rows, d_hidden, d_weight, d_bias


class FusedLinearPACTFunction(torch.autograd.Function):
    """``loss, ce, kl, gate, num_rows, ce_rows, kl_rows = FusedLinearPACTFunction.apply(hidden, weight, bias,
    softcap, labels, ref_full, ref_post, ref_hidden, ref_weight, ref_bias, safety_ids, safety_weights,
    answer_pos, cfg, backend, chunk_rows, row_weight)``.

    Only ``loss`` is differentiable, with respect to ``hidden``, ``weight`` and
    ``bias``; the gradients are made in forward and backward multiplies them
    in place by the incoming gradient (no host synchronisation to test it
    against 1), casts those held in float32 for float16 inputs, and hands them
    over (a second backward raises).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, softcap, labels, ref_full, ref_post, ref_hidden, ref_weight, ref_bias,
                safety_ids, safety_weights, answer_pos, cfg, backend, chunk_rows, row_weight):
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        loss, ce, kl, gate, n, ce_rows, kl_rows, *grads = linear_forward_with_grad(
            hidden, weight, bias, softcap, labels, ref_full, ref_post, ref_hidden, ref_weight, ref_bias,
            safety_ids, safety_weights, answer_pos, cfg, backend, chunk_rows, needs, row_weight)
        ctx.grads = grads
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(ce, kl, gate, n, ce_rows, kl_rows)
        return loss, ce, kl, gate, n, ce_rows, kl_rows

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *unused):
        # Handed over, not kept: autograd then takes the tensors as the leaves' .grad without a copy.
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError(
                "fused_linear_pact_loss: a second backward through one forward; its gradients were made once and "
                "handed over by the first. Recompute the loss for another backward."
            )
        out = []
        for g, dtype in zip(grads, ctx.dtypes):
            if g is not None:
                g = g.mul_(grad_loss) if g.dtype == dtype else torch.mul(g, grad_loss, out=torch.empty_like(g, dtype=dtype))
            out.append(g)
        return (*out, *([None] * 14))


def _run(hidden, weight, labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos, cfg, *, bias,
         softcap, backend, chunk_rows, ref_hidden=None, ref_weight=None, ref_bias=None, row_weight=None):
    """Check the inputs, pick the backend, apply the Function; a :class:`PACTLossOutput`."""
    check_linear_inputs(hidden, weight, bias, softcap, labels, ref_full, ref_post, ref_hidden, ref_weight, ref_bias,
                        safety_ids, safety_weights, answer_pos, cfg, chunk_rows)
    name = resolve_backend(backend, hidden)
    if name == "naive":
        raise ValueError("backend='naive' is not fused; for the oracle call pact_loss(hidden @ weight.T, ...) "
                         "with backend='naive', or pick torch / triton / cuda here")
    softcap = None if softcap is None else float(softcap)
    loss, ce, kl, gate, n, ce_rows, kl_rows = FusedLinearPACTFunction.apply(
        hidden, weight, bias, softcap, labels, ref_full, ref_post, ref_hidden, ref_weight, ref_bias, safety_ids,
        safety_weights, answer_pos, cfg, name, chunk_rows, row_weight)
    return PACTLossOutput(loss=loss, ce=ce, kl=kl, gate=gate, num_rows=n, ce_rows=ce_rows, kl_rows=kl_rows)


def fused_linear_pact_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ref_full: torch.Tensor | None,
    ref_post: torch.Tensor | None,
    safety_ids: torch.Tensor,
    safety_weights: torch.Tensor,
    answer_pos: torch.Tensor | None,
    *,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    backend: str = "auto",
    chunk_rows: int | None = None,
    ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    ref_bias: torch.Tensor | None = None,
    **loss_config,
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
        **loss_config: the :class:`PACTConfig` fields (``variant``, ``lambda_kl``, ...).

    Returns:
        :class:`PACTLossOutput` as :func:`pact_loss`, ``loss`` differentiable
        with respect to ``hidden``, ``weight`` and ``bias``.
    """
    return _run(hidden, weight, labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos,
                PACTConfig(**loss_config), bias=bias, softcap=softcap, backend=backend, chunk_rows=chunk_rows,
                ref_hidden=ref_hidden, ref_weight=ref_weight, ref_bias=ref_bias)


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
    """Mean cross-entropy of ``hidden @ weight.T (+ bias)`` over the labelled rows, fused as
    :func:`fused_linear_pact_loss` (the same chunks and kernels with λ = 0).

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
    ids = torch.zeros(1, dtype=torch.long, device=hidden.device if isinstance(hidden, torch.Tensor) else None)
    ones = torch.ones(1, dtype=torch.float32, device=ids.device)
    rows = hidden.shape[0] if isinstance(hidden, torch.Tensor) and hidden.dim() == 2 else 0
    placeholder = torch.zeros((), dtype=torch.float32, device=ids.device).expand(rows, 1)  # KL on S = {0}, λ = 0
    cfg = PACTConfig(lambda_kl=0.0, variant="safety_tokens", ignore_index=ignore_index)
    return _run(hidden, weight, labels, placeholder, None, ids, ones, None, cfg, bias=bias, softcap=softcap,
                backend=backend, chunk_rows=chunk_rows, row_weight=row_weight)


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
        return _run(hidden, weight, labels, ref_full, ref_post, self.safety_ids, self.safety_weights, answer_pos,
                    self.config, bias=bias, softcap=self.softcap, backend=self.backend, chunk_rows=self.chunk_rows,
                    ref_hidden=ref_hidden, ref_weight=ref_weight, ref_bias=ref_bias)

    def extra_repr(self) -> str:
        return f"k={self.safety_ids.numel()}, softcap={self.softcap}, backend={self.backend!r}, config={self.config}"
