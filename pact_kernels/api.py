"""``pact_loss``: the PACT objective (SPEC §3) behind one function, and its module."""
from __future__ import annotations

import torch

from .autograd import KernelOptions, PACTLossFunction
from .backends import FUSED_BACKENDS
from .backends.naive import naive_pact_loss
from .config import PACTConfig, resolve_config
from .inputs import PACTInputs
from .output import PACTLossOutput

BACKENDS = ("auto", "naive") + tuple(FUSED_BACKENDS)


def triton_available() -> bool:
    """True when the ``triton`` backend can run here (module present and triton importable)."""
    try:
        import triton  # noqa: F401

        from .backends import triton_launch  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, logits: torch.Tensor) -> str:
    """The concrete backend for ``backend`` on ``logits``' device.

    ``auto`` picks ``triton`` for CUDA tensors when triton is installed, and
    ``torch`` everywhere else (float64 logits included: the triton kernels
    accumulate in float32 and refuse float64).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        use_triton = logits.is_cuda and logits.dtype != torch.float64 and triton_available()
        return "triton" if use_triton else "torch"
    return backend


def pact_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_full: torch.Tensor | None,
    ref_post: torch.Tensor | None,
    safety_ids: torch.Tensor,
    safety_weights: torch.Tensor,
    answer_pos: torch.Tensor | None,
    *,
    config: PACTConfig | None = None,
    backend: str = "auto",
    inplace_grad: bool = False,
    **overrides,
) -> PACTLossOutput:
    """The PACT loss ``mean(CE) + λ·mean(KL_safety)`` over the labelled rows (SPEC §3).

    Args:
        logits: ``[rows, V]`` fine-tuned logits z, float32 / bfloat16 / float16
            (float64 for gradient checks). The only input that gets a gradient.
        labels: ``[rows]`` integer next-token targets; ``ignore_index`` on rows
            that count for nothing (prompt, padding).
        ref_full: ``[rows, K]`` (gathered on ``safety_ids``, in their order) or
            ``[rows, V]`` frozen reference logits on the full context. The
            ``full_vocab`` variant needs ``[rows, V]``.
        ref_post: like ``ref_full``, on the no-prompt view (row k of the answer
            in both views predicts the same token). Read by ``response_only_ref``
            and ``pact`` only; may be None for the other variants.
        safety_ids: ``[K]`` integer ids of the safety set S, distinct, in ``[0, V)``.
        safety_weights: ``[K]`` float weights w(v) ≥ 0, at least one > 0 (zeros
            keep a token in S for the softmax and the dispersion, out of the KL).
        answer_pos: ``[rows]`` integer 0-based position of each row within its
            answer (the decay of ``pact``); may be None for the other variants.
        config: a :class:`PACTConfig` (default: the paper's, ``PACTConfig()``).
        backend: ``auto`` (triton on CUDA, else torch), ``naive`` (the oracle),
            ``torch`` (row blocks, gradient made in forward), ``triton``, ``cuda``.
        inplace_grad: fused backends only: write the gradient into the logits
            buffer (saves one ``[rows, V]`` buffer; anything else that reads
            these logits afterwards sees the gradient instead). float16
            logits keep their own buffer: their gradient is held in float32
            until backward (:mod:`pact_kernels.precision`).
        **overrides: :class:`PACTConfig` fields (``lambda_kl``, ``variant``, ...)
            set on ``config``; any other keyword is a TypeError naming the valid ones.

    Returns:
        :class:`PACTLossOutput` with ``loss`` (differentiable scalar), ``ce``,
        ``kl`` (detached scalars), ``gate`` (``[rows]`` float32 c̃),
        ``num_rows`` and the per-row ``ce_rows`` / ``kl_rows``. With no labelled row the loss is 0 with zero gradients.

    Non-finite inputs (every backend, :mod:`pact_kernels.nonfinite`): unlabelled
    rows are never read (NaN or inf there changes nothing; their gradient is 0);
    in a labelled row NaN or +inf logits make its CE NaN (its KL too when on S),
    non-finite reference logits its KL, and the loss is then NaN (never inf).

    Gradients flow to ``logits`` only; the references are treated as constants.
    Dtypes: :mod:`pact_kernels.precision` (float32 accumulation; the gradient
    in the logits' dtype, scaled by the incoming gradient in float32 first
    for float16 logits).
    """
    cfg = resolve_config(config, overrides, "pact_loss", ("backend", "inplace_grad"))
    inputs = PACTInputs(labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos)
    return loss_on_inputs(logits, inputs, cfg, backend=backend, inplace_grad=inplace_grad)


def pact_loss_from_config(logits, labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos,
                          cfg: PACTConfig, *, backend: str = "auto", inplace_grad: bool = False,
                          chunk_rows: int | None = None) -> PACTLossOutput:
    """:func:`pact_loss` with the hyper-parameters as a :class:`PACTConfig`, positionally.

    ``chunk_rows`` sets the rows per block of the ``torch`` backend (tests use
    it to exercise partial blocks).
    """
    inputs = PACTInputs(labels, ref_full, ref_post, safety_ids, safety_weights, answer_pos)
    return loss_on_inputs(logits, inputs, cfg, backend=backend, inplace_grad=inplace_grad, chunk_rows=chunk_rows)


def loss_on_inputs(logits: torch.Tensor, inputs: PACTInputs, cfg: PACTConfig, *, backend: str = "auto",
                   inplace_grad: bool = False, chunk_rows: int | None = None) -> PACTLossOutput:
    """:func:`pact_loss` on a :class:`PACTInputs`: check, pick the backend, run it."""
    name = resolve_backend(backend, logits)
    inputs.check(logits, cfg)
    if name == "naive":
        if inplace_grad:
            raise ValueError("inplace_grad=True needs a fused backend; backend='naive' always uses autograd")
        return naive_pact_loss(logits, inputs, cfg)
    options = KernelOptions(backend=name, chunk_rows=chunk_rows, inplace_grad=inplace_grad)
    loss, ce, kl, gate, n, ce_rows, kl_rows = PACTLossFunction.apply(logits, inputs, cfg, options)
    return PACTLossOutput(loss=loss, ce=ce, kl=kl, gate=gate, num_rows=n, ce_rows=ce_rows, kl_rows=kl_rows)


class PACTLoss(torch.nn.Module):
    """``nn.Module`` holding the safety set and the hyper-parameters.

    Args:
        safety_ids: ``[K]`` integer ids of S.
        safety_weights: ``[K]`` float weights (None: all ones).
        config: a :class:`PACTConfig` (default: the paper's).
        backend: as in :func:`pact_loss`.
        inplace_grad: as in :func:`pact_loss`.

    ``forward(logits, labels, ref_full, ref_post=None, answer_pos=None)`` returns
    :class:`PACTLossOutput`. The ids and weights are buffers, so ``.to(device)``
    moves them with the model.
    """

    def __init__(self, safety_ids, safety_weights=None, config: PACTConfig | None = None,
                 backend: str = "auto", inplace_grad: bool = False):
        super().__init__()
        ids = torch.as_tensor(safety_ids, dtype=torch.long)
        weights = torch.ones(ids.shape, dtype=torch.float32) if safety_weights is None else torch.as_tensor(
            safety_weights, dtype=torch.float32
        )
        self.register_buffer("safety_ids", ids)
        self.register_buffer("safety_weights", weights)
        self.config = config or PACTConfig()
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is unknown; use one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.inplace_grad = inplace_grad

    def forward(self, logits, labels, ref_full, ref_post=None, answer_pos=None) -> PACTLossOutput:
        inputs = PACTInputs(labels, ref_full, ref_post, self.safety_ids, self.safety_weights, answer_pos)
        return loss_on_inputs(logits, inputs, self.config, backend=self.backend, inplace_grad=self.inplace_grad)

    def extra_repr(self) -> str:
        return f"k={self.safety_ids.numel()}, backend={self.backend!r}, config={self.config}"
