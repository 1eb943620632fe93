"""The ``torch`` backend: a memory-frugal PyTorch implementation (CPU default).

It works over blocks of rows. Each block is upcast to float32 once, gives its
log-sum-exp, cross-entropy and the K-column work of SPEC §3, and writes its
gradient rows at once (``(softmax(z) − onehot(y))/n`` plus ``λ·T/n·(p_ft − p_ref)``
on S, SPEC §3), so backward only scales the stored gradient. Beyond the
gradient buffer (logits' dtype; the logits themselves with ``inplace_grad``),
no float32 ``[rows, V]`` tensor ever exists: only one block's.

:func:`forward_with_grad` is this backend's entry point (the protocol of
:mod:`pact_kernels.backends`); the autograd wrapper shared by every fused
backend is :class:`pact_kernels.autograd.PACTLossFunction`.
"""
from __future__ import annotations

import torch

from ..config import PACTConfig
from ..formulas import dispersion, position_decay
from ..inputs import PACTInputs, on_safety_set
from ..output import KernelResult
from ..precision import accumulate_dtype
from .common import count_labelled, finish, gradient_buffer

# Elements of one float32 block: 2**20 floats = 4 MiB per temporary.
BLOCK_ELEMENTS = 1 << 20


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per block so that one float32 block holds about BLOCK_ELEMENTS values."""
    return max(1, BLOCK_ELEMENTS // max(1, vocab_size))


def restricted_kl(
    z_s: torch.Tensor,
    r_full: torch.Tensor,
    r_post: torch.Tensor | None,
    weights: torch.Tensor,
    answer_pos: torch.Tensor | None,
    cfg: PACTConfig,
):
    """KL term of one block on the K safety columns, with its gradient.

    Args:
        z_s: ``[c, K]`` fine-tuned logits on S (compute dtype).
        r_full: ``[c, K]`` full-context reference logits on S.
        r_post: ``[c, K]`` no-prompt reference logits on S (gated variants only).
        weights: ``[K]`` effective weights (ones for ``safety_tokens``).
        answer_pos: ``[c]`` answer positions (``pact`` only).
        cfg: the hyper-parameters.

    Returns:
        ``(kl_rows [c], grad_s [c, K], gate [c])`` where ``grad_s = T·(p_ft − p_ref)``
        is ``d KL_row / d z_s``.
    """
    temp = cfg.kl_temperature
    if cfg.uses_gate:
        i_ft = dispersion(torch.softmax(z_s / cfg.gate_temperature, dim=-1), cfg.mass_threshold)
        i_post = dispersion(torch.softmax(r_post / cfg.gate_temperature, dim=-1), cfg.mass_threshold)
        gate = torch.sigmoid(cfg.gate_scale * (i_ft - i_post - cfg.gate_bias))
        if cfg.uses_decay:
            gate = gate * position_decay(answer_pos, cfg.decay_start, cfg.decay_tau, z_s.dtype)
        mixed = (1 - gate)[:, None] * r_full + gate[:, None] * r_post
    else:
        gate = z_s.new_zeros(z_s.shape[0])
        mixed = r_full
    positive = weights > 0
    log_unnormalised = torch.where(positive, weights.log() + mixed / temp, float("-inf"))
    log_p_ref = torch.log_softmax(log_unnormalised, dim=-1)
    p_ref = log_p_ref.exp()
    log_p_ft = torch.log_softmax(z_s / temp, dim=-1)
    kl_rows = temp**2 * torch.where(positive, p_ref * (log_p_ref - log_p_ft), 0).sum(dim=-1)
    grad_s = temp * (log_p_ft.exp() - p_ref)
    return kl_rows, grad_s, gate


def full_vocab_kl_block(z: torch.Tensor, r: torch.Tensor, temp: float):
    """Full-vocabulary KL of one block and its gradient.

    Args:
        z: ``[c, V]`` fine-tuned logits (compute dtype).
        r: ``[c, V]`` full-context reference logits (compute dtype).
        temp: T.

    Returns:
        ``(kl_rows [c], grad [c, V])`` with ``grad = T·(softmax(z/T) − softmax(r/T))``.
    """
    log_p_ref = torch.log_softmax(r / temp, dim=-1)
    log_p_ft = torch.log_softmax(z / temp, dim=-1)
    p_ref = log_p_ref.exp()
    terms = torch.where(p_ref > 0, p_ref * (log_p_ref - log_p_ft), 0)
    kl_rows = temp**2 * terms.sum(dim=-1)
    del terms, log_p_ref
    grad = log_p_ft.exp_().sub_(p_ref).mul_(temp)
    return kl_rows, grad


def cross_entropy_block(z: torch.Tensor, y: torch.Tensor):
    """``(ce_rows [c], g [c, V])`` of one block: ``lse(z) − z[y]`` and ``softmax(z) − onehot(y)``.

    ``z`` ``[c, V]`` in the compute dtype, ``y`` ``[c]`` int64 targets in ``[0, V)``.
    """
    lse = torch.logsumexp(z, dim=-1)
    ce_rows = lse - z.gather(1, y[:, None]).squeeze(1)
    g = torch.sub(z, lse[:, None]).exp_()
    g.scatter_add_(1, y[:, None], g.new_full((g.shape[0], 1), -1.0))
    return ce_rows, g


def forward_with_grad(logits: torch.Tensor, inputs: PACTInputs, cfg: PACTConfig, *, chunk_rows: int | None = None,
                      inplace_grad: bool = False) -> KernelResult:
    """Loss terms and ``d loss / d logits`` in one pass over row blocks of ``chunk_rows`` rows.

    The protocol of :mod:`pact_kernels.backends`; ``grad`` is the logits tensor
    itself with ``inplace_grad`` when their dtype holds it (not float16).
    """
    rows, vocab = logits.shape
    compute = accumulate_dtype(logits.dtype)
    kl_rows, gate = (torch.zeros(rows, dtype=compute, device=logits.device) for _ in range(2))
    if cfg.variant == "full_vocab":
        def add_kl(z, g, block):
            kl_rows[block], grad_v = full_vocab_kl_block(z, inputs.ref_full[block].detach().to(compute),
                                                         cfg.kl_temperature)
            g.add_(grad_v, alpha=cfg.lambda_kl)
    else:
        block_kl = _safety_set_blocks(inputs, cfg, vocab, compute)

        def add_kl(z, g, block):
            kl_rows[block], grad_s, gate[block] = block_kl(z, block)
            g.index_add_(1, inputs.safety_ids.long(), grad_s, alpha=cfg.lambda_kl)

    labelled, n, ce_rows, grad = _sweep(logits, inputs.labels, cfg.ignore_index, chunk_rows, inplace_grad, add_kl)
    return finish(ce_rows, kl_rows, gate, labelled, n, cfg, grad)


def cross_entropy_with_grad(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, *,
                            inplace_grad: bool = False, chunk_rows: int | None = None):
    """Plain cross-entropy of ``logits`` ``[rows, V]`` over row blocks: ``(ce_rows, n, grad)``.

    ``ce_rows`` ``[rows]`` in the accumulation dtype (float32, float64 for
    float64 logits; 0 on ``ignore_index`` rows); ``n`` int64 scalar;
    ``grad = (softmax(z) − onehot(y))/n`` as :func:`forward_with_grad`'s.
    """
    labelled, n, ce_rows, grad = _sweep(logits, labels, ignore_index, chunk_rows, inplace_grad, None)
    return torch.where(labelled, ce_rows, 0), n, grad


def _sweep(logits, labels, ignore_index: int, chunk_rows, inplace_grad: bool, add_kl):
    """The row-block loop: per block the CE and its gradient, ``add_kl(z, g, rows)`` adding the KL's into
    ``g``, then ``g/n`` (0 on unlabelled rows) into the gradient buffer.

    Returns ``(labelled, n, ce_rows [rows] in the accumulation dtype, grad)``.
    """
    rows, vocab = logits.shape
    compute = accumulate_dtype(logits.dtype)
    chunk = chunk_rows or default_chunk_rows(vocab)
    labelled, n, inv_n = count_labelled(labels, ignore_index, compute)
    target = torch.where(labelled, labels, 0).long()
    grad = gradient_buffer(logits.detach(), inplace_grad)
    ce_rows = torch.zeros(rows, dtype=compute, device=logits.device)
    for start in range(0, rows, chunk):
        block = slice(start, min(start + chunk, rows))
        z = logits[block].detach().to(compute)
        ce_rows[block], g = cross_entropy_block(z, target[block])
        if add_kl is not None:
            add_kl(z, g, block)
        g.mul_(inv_n).masked_fill_(~labelled[block, None], 0.0)
        grad[block] = g  # last: with inplace_grad this overwrites the block just read
        del z, g
    return labelled, n, ce_rows, grad


def _safety_set_blocks(inputs: PACTInputs, cfg: PACTConfig, vocab: int, compute: torch.dtype):
    """``f(z [c, V], rows slice) -> (kl_rows, grad_s, gate)``: :func:`restricted_kl` of one block."""
    ids = inputs.safety_ids.long()
    weights = inputs.kl_weights(cfg, compute)
    r_full = on_safety_set(inputs.ref_full.detach(), ids, vocab)
    r_post = on_safety_set(inputs.ref_post.detach(), ids, vocab) if cfg.uses_gate else None

    def block_kl(z: torch.Tensor, block: slice):
        return restricted_kl(
            z[:, ids], r_full[block].to(compute), None if r_post is None else r_post[block].to(compute), weights,
            None if inputs.answer_pos is None else inputs.answer_pos[block], cfg)

    return block_kl
