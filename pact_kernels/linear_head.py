"""The output head applied chunk by chunk, and the gradients it hands back, for the fused losses.

Everything runs in one compute dtype, the autocast dtype when autocast is on,
else the head weight's (:func:`pact_kernels.precision.head_compute_dtype`):
the hidden rows, the head (and bias) are cast to it. The rows go through in
chunks (:class:`HeadPass`); for each,

1. ``z = hidden_c @ weight.T (+ bias)`` into one reused ``[chunk, V]`` buffer
   (the compute dtype), soft-capped in place (``cap·tanh(z/cap)``) when asked;
2. a per-row kernel writes ``g = d loss_c / d z`` into that same buffer
   (float16: into a float32 buffer, see below), times the soft-cap's derivative
   ``1 − tanh²``;
3. at once ``d hidden_c = g @ weight`` and, only when they require grad,
   ``d weight += gᵀ @ hidden_c`` and ``d bias += Σ_rows g``, accumulated in
   float32 (float64 for float64 inputs) across chunks.

Each kernel scales its chunk by ``1/n_chunk``; the factor ``n_chunk/n`` to the
whole call's ``n`` (and a row weight) is applied to the ``[chunk, H]`` side,
never to the ``[chunk, V]`` buffer. Backward multiplies the stored gradients
by the incoming gradient and hands them over (:func:`hand_over_gradients`).

float16: the kernel's ``g`` is float32; the two gradient GEMMs take it as
float16 times ``n_chunk`` (the per-row gradient, bounded by ``1 + λ·T`` in
magnitude, so small probabilities keep float16's normal range) and divide by
it in float32. ``d hidden`` and ``d weight`` are held in float32 until
backward has multiplied them by the loss scale, then cast to their input's
dtype (:func:`pact_kernels.precision.held_gradient_dtype`).

Memory: the ``[chunk, V]`` buffers (the logits/gradient; the soft-cap's
derivative when ``softcap``; the reference logits when ``full_vocab`` takes
a reference head; the float32 gradient for float16) together hold at most
:func:`default_chunk_rows`'s budget, ``max(CHUNK_BUDGET_BYTES, bytes of
hidden)``: the head's transient memory is about that of its input. Beyond
them: ``d hidden`` (hidden's size), the float32 ``d weight`` (weight's size,
when it requires grad), the head cast to the compute dtype when it is not in
it already (autocast over a float32 head: weight's size in bfloat16, as
autocast's own ``F.linear`` makes) and the torch backend's float32 sub-blocks
(4 MiB each, :data:`pact_kernels.backends.torch_blocks.BLOCK_ELEMENTS`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import FLOAT_DTYPES, check_chunk_rows, check_positive_number, require_float_dtype, require_rows_matrix
from .precision import accumulate_dtype, head_compute_dtype, held_gradient_dtype

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


@dataclass(frozen=True, eq=False)
class ReferenceHead:
    """``full_vocab``'s reference logits made chunk by chunk: ``hidden [rows, H_ref] @ weight.T (+ bias)``.

    ``weight`` ``[V, H_ref]`` (None: the policy's head), ``bias`` ``[V]`` (None:
    the policy's bias when ``weight`` is None).
    """

    hidden: torch.Tensor
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class HeadOptions:
    """How the fused head runs: ``softcap`` (None or > 0), ``backend`` (``torch``, ``triton``, ``cuda``),
    ``chunk_rows`` (None: :func:`default_chunk_rows`), the ``full_vocab`` :class:`ReferenceHead`, and
    ``row_weight`` (None, or ``f(ce_rows [c] float32, rows slice) -> [c]`` weights of the CE, detached)."""

    softcap: float | None = None
    backend: str = "torch"
    chunk_rows: int | None = None
    reference: ReferenceHead | None = None
    row_weight: object = None


def _check_linear(name: str, t, shape: tuple, like: torch.Tensor, fix: str) -> None:
    """``t`` is a floating tensor of ``shape`` on ``like``'s device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(want is not None and got != want for got, want in zip(t.shape, shape)):
        want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {list(t.shape)}; expected {want} ({fix})")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but hidden is on {like.device}; move it with .to(hidden.device)")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; use float32, bfloat16, float16 or float64 "
                        "(the head computes in one dtype, pact_kernels.precision)")


def check_head(hidden, weight, bias, options: HeadOptions) -> None:
    """Raise TypeError / ValueError for a head the fused losses cannot use.

    Shapes: ``hidden [rows, H]``, ``weight [V, H]``, ``bias [V]``.
    """
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
    require_float_dtype("hidden", hidden)
    require_rows_matrix("hidden", hidden, width="H")
    width = hidden.shape[1]
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[1] != width:
        raise ValueError(f"weight has shape {list(weight.shape)} but hidden has width H = {width}; weight must be "
                         f"the output embedding [V, {width}] (lm_head.weight), not its transpose")
    _check_linear("weight", weight, (None, width), hidden, "the output embedding [V, H]")
    if bias is not None:
        _check_linear("bias", bias, (weight.shape[0],), hidden, "one bias per vocabulary entry")
    check_positive_number("softcap", options.softcap, "Gemma-2 uses 30.0")
    check_chunk_rows(options.chunk_rows)


def check_reference_head(ref: ReferenceHead, hidden: torch.Tensor, weight: torch.Tensor) -> None:
    """Raise for a :class:`ReferenceHead` that does not fit ``hidden [rows, H]`` and ``weight [V, H]``."""
    rows, vocab = hidden.shape[0], weight.shape[0]
    if not isinstance(ref.hidden, torch.Tensor) or ref.hidden.dim() != 2 or ref.hidden.shape[0] != rows:
        shape = list(ref.hidden.shape) if isinstance(ref.hidden, torch.Tensor) else type(ref.hidden).__name__
        raise ValueError(f"ref_hidden has shape {shape}; expected [{rows}, H_ref], one row per hidden row")
    _check_linear("ref_weight", weight if ref.weight is None else ref.weight, (vocab, ref.hidden.shape[1]), hidden,
                  "the reference's output embedding [V, H_ref], V as weight's")
    _check_linear("ref_hidden", ref.hidden, (rows, None), hidden, "the reference's hidden rows")
    if ref.bias is not None:
        _check_linear("ref_bias", ref.bias, (vocab,), hidden, "one bias per vocabulary entry")


def linear_into(out: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias, softcap, deriv=None):
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


class HeadPass:
    """One pass of the head over row chunks: the logits of each chunk, then its gradients (module doc).

    Build it with autocast off. ``compute``: the head's dtype
    (:func:`pact_kernels.precision.head_compute_dtype`); ``labelled``: ``[rows]``
    bool, the rows the loss averages over (``n``); ``needs``: which of
    ``(hidden, weight, bias)`` get a gradient.
    """

    def __init__(self, compute: torch.dtype, hidden: torch.Tensor, weight: torch.Tensor, bias, options: HeadOptions,
                 labelled: torch.Tensor, needs=(True, True, True)):
        rows, vocab = hidden.shape[0], weight.shape[0]
        self.compute, self.softcap = compute, options.softcap
        self.wide = accumulate_dtype(compute)
        # float16: the kernel's gradient is float32; the gradient GEMMs take it lifted by n_chunk (module doc).
        self.lift = held_gradient_dtype(compute) != compute
        buffers = 1 + (options.softcap is not None) + (options.reference is not None)
        chunk = options.chunk_rows or default_chunk_rows(rows, vocab, hidden, buffers, compute)
        self.chunk = max(1, min(chunk, rows))
        self.n = labelled.sum()
        self.inv_n = 1.0 / self.n.clamp_min(1).to(self.wide)
        self.hidden, self.weight = hidden.detach(), weight.detach().to(compute)
        self.bias = None if bias is None else bias.detach().to(compute)
        self.buf = torch.empty(self.chunk, vocab, dtype=compute, device=hidden.device)
        self.deriv = torch.empty_like(self.buf) if options.softcap is not None else None
        self._reference(options.reference, weight, bias)
        need_h, need_w, need_b = needs
        self.d_hidden = torch.empty_like(hidden, dtype=held_gradient_dtype(hidden.dtype)) if need_h else None
        self.d_weight = torch.zeros(weight.shape, dtype=self.wide, device=hidden.device) if need_w else None
        self.d_bias = torch.zeros(vocab, dtype=self.wide, device=hidden.device) if need_b else None
        self.dtypes = (weight.dtype, None if bias is None else bias.dtype)

    def _reference(self, ref: ReferenceHead | None, weight: torch.Tensor, bias) -> None:
        """The reference head in the compute dtype (the policy's own head where ``ref`` names none)."""
        self.ref, self.ref_buf = ref, None
        if ref is None:
            return
        own = ref.weight is None or ref.weight is weight
        self.ref_w = self.weight if own else ref.weight.detach().to(self.compute)
        ref_bias = bias if ref.bias is None and own else ref.bias
        self.ref_b = None if ref_bias is None else (self.bias if ref_bias is bias else ref_bias.detach().to(self.compute))
        self.ref_buf = torch.empty_like(self.buf)

    def chunks(self):
        """Yields ``(rows slice, h [c, H], z [c, V])``: the hidden rows and the (soft-capped) logits of each chunk,
        both in the compute dtype; ``z`` is the reused buffer, free for the chunk's gradient."""
        rows = self.hidden.shape[0]
        for start in range(0, rows, self.chunk):
            sl = slice(start, min(start + self.chunk, rows))
            c = sl.stop - sl.start
            h = self.hidden[sl].to(self.compute)
            deriv = None if self.deriv is None else self.deriv[:c]
            yield sl, h, linear_into(self.buf[:c], h, self.weight, self.bias, self.softcap, deriv)

    def reference_logits(self, sl: slice) -> torch.Tensor:
        """``[c, V]`` reference logits of the rows ``sl`` from the :class:`ReferenceHead` (soft-capped too)."""
        c = sl.stop - sl.start
        h = self.ref.hidden.detach()[sl].to(self.compute)
        return linear_into(self.ref_buf[:c], h, self.ref_w, self.ref_b, self.softcap)

    def backward_chunk(self, sl: slice, h: torch.Tensor, g: torch.Tensor, n_c: torch.Tensor, weights_c=None) -> None:
        """Fold the chunk's ``g = d loss_c / d z`` (``[c, V]``, scaled by ``1/n_c`` by its kernel; the logits
        buffer, or float32 for float16) into the gradients, rescaled to ``w/n`` (``weights_c``: ``[c]`` or None)."""
        c = sl.stop - sl.start
        if weights_c is None:
            scale, row_scale = n_c * self.inv_n, n_c
        else:
            scale, row_scale = (weights_c * n_c * self.inv_n)[:, None], (weights_c * n_c)[:, None]
        if self.deriv is not None:
            g.mul_(self.deriv[:c])
        if self.d_bias is not None:
            self.d_bias.add_(torch.mv(g.t(), scale.to(g.dtype).reshape(-1).expand(c)))
        if self.lift:  # float32 g -> float16 per-row gradients g·n_c (times the row weight), into the spent buffer
            g = torch.mul(g, row_scale.to(g.dtype), out=self.buf[:c])
            if self.d_hidden is not None:
                self.d_hidden[sl] = torch.mm(g, self.weight)  # times 1/n in gradients()
            if self.d_weight is not None:
                self.d_weight.add_(torch.mm(g.t(), h))
        else:
            scale = scale.to(self.compute)
            if self.d_hidden is not None:
                self.d_hidden[sl] = torch.mm(g, self.weight).mul_(scale)
            if self.d_weight is not None:
                _accumulate(self.d_weight, g.t(), h * scale)

    def gradients(self) -> tuple:
        """``(d_hidden, d_weight, d_bias)``, None where not needed, else in
        :func:`pact_kernels.precision.held_gradient_dtype` of their input's dtype."""
        del self.buf, self.deriv, self.ref_buf
        if self.lift:
            for grad in (self.d_hidden, self.d_weight):
                if grad is not None:
                    grad.mul_(self.inv_n)
        weight_dtype, bias_dtype = self.dtypes
        d_weight = None if self.d_weight is None else self.d_weight.to(held_gradient_dtype(weight_dtype))
        d_bias = None if self.d_bias is None else self.d_bias.to(held_gradient_dtype(bias_dtype))
        return self.d_hidden, d_weight, d_bias


def keep_gradients(ctx, grads: tuple, hidden, weight, bias, *outputs) -> tuple:
    """In an autograd Function's forward: hold ``grads`` (of hidden, weight, bias) for backward; every output
    but the first (the loss) is non-differentiable. Returns ``outputs``."""
    ctx.grads = grads
    ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
    ctx.mark_non_differentiable(*outputs[1:])
    return outputs


def hand_over_gradients(ctx, grad_loss: torch.Tensor, caller: str) -> list:
    """In backward: the held gradients times ``grad_loss`` (in place; float32 ones of float16 inputs cast after),
    handed over, not kept (autograd then takes them as the leaves' ``.grad`` without a copy)."""
    grads, ctx.grads = ctx.grads, None
    if grads is None:
        raise RuntimeError(
            f"{caller}: a second backward through one forward; its gradients were made once and "
            "handed over by the first. Recompute the loss for another backward."
        )
    out = []
    for g, dtype in zip(grads, ctx.dtypes):
        if g is not None:
            g = g.mul_(grad_loss) if g.dtype == dtype else torch.mul(g, grad_loss, out=torch.empty_like(g, dtype=dtype))
        out.append(g)
    return out
