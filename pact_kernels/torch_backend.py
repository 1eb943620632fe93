"""The ``torch`` backend: a memory-frugal PyTorch implementation (CPU default).

It works over blocks of rows. Each block is upcast to float32 once, gives its
log-sum-exp, cross-entropy and the K-column work of SPEC §3, and writes its
gradient rows at once (``(softmax(z) − onehot(y))/n`` plus ``λ·T/n·(p_ft − p_ref)``
on S, SPEC §3), so backward only scales the stored gradient. Beyond the
gradient buffer (logits' dtype; the logits themselves with ``inplace_grad``),
no float32 ``[rows, V]`` tensor ever exists: only one block's.

:func:`forward_with_grad` is this backend's entry point; the autograd
wrapper shared by every fused backend is :class:`pact_kernels.function.PACTLossFunction`.
"""
from __future__ import annotations

import torch

from .config import PACTConfig
from .formulas import dispersion, position_decay
from .naive_backend import on_safety_set
from .output import PACTLossOutput
from .precision import accumulate_dtype, held_gradient_dtype

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


def forward_with_grad(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_full: torch.Tensor | None,
    ref_post: torch.Tensor | None,
    safety_ids: torch.Tensor,
    safety_weights: torch.Tensor,
    answer_pos: torch.Tensor | None,
    cfg: PACTConfig,
    chunk_rows: int | None = None,
    inplace_grad: bool = False,
):
    """Loss terms and ``d loss / d logits`` in one pass over row blocks.

    Shapes as in :func:`pact_kernels.pact_loss`. Returns
    ``(loss, ce, kl, gate, num_rows, grad, ce_rows, kl_rows)``; ``grad`` has the
    logits' shape, the dtype :func:`pact_kernels.precision.held_gradient_dtype`
    gives (float32 for float16 logits) and is the logits tensor itself when
    ``inplace_grad`` and that dtype is the logits';
    ``ce_rows``/``kl_rows`` are float32 ``[rows]``, 0 on ignored rows.
    """
    rows, vocab = logits.shape
    compute = accumulate_dtype(logits.dtype)
    device = logits.device
    ids = safety_ids.long()
    temp = cfg.kl_temperature
    chunk = chunk_rows or default_chunk_rows(vocab)

    labelled = labels != cfg.ignore_index
    n = labelled.sum()
    inv_n = 1.0 / n.clamp_min(1).to(compute)
    target = torch.where(labelled, labels, 0).long()

    restricted = cfg.variant != "full_vocab"
    if restricted:
        weights = torch.ones_like(safety_weights, dtype=compute) if cfg.variant == "safety_tokens" else safety_weights.to(compute)
        r_full_s = on_safety_set(ref_full.detach(), ids, vocab)
        r_post_s = on_safety_set(ref_post.detach(), ids, vocab) if cfg.uses_gate else None

    grad_dtype = held_gradient_dtype(logits.dtype)
    grad = logits.detach() if inplace_grad and grad_dtype == logits.dtype else torch.empty_like(logits, dtype=grad_dtype)
    ce_rows = torch.empty(rows, dtype=compute, device=device)
    kl_rows = torch.empty(rows, dtype=compute, device=device)
    gate = torch.zeros(rows, dtype=compute, device=device)

    for start in range(0, rows, chunk):
        block = slice(start, min(start + chunk, rows))
        z = logits[block].detach().to(compute)
        y = target[block]
        lse = torch.logsumexp(z, dim=-1)
        ce_rows[block] = lse - z.gather(1, y[:, None]).squeeze(1)
        # softmax(z) − onehot(y): the cross-entropy gradient of this block.
        g = torch.sub(z, lse[:, None]).exp_()
        g.scatter_add_(1, y[:, None], g.new_full((g.shape[0], 1), -1.0))
        if restricted:
            kl_b, grad_s, gate_b = restricted_kl(
                z[:, ids],
                r_full_s[block].to(compute),
                r_post_s[block].to(compute) if r_post_s is not None else None,
                weights,
                answer_pos[block] if answer_pos is not None else None,
                cfg,
            )
            gate[block] = gate_b
            g.index_add_(1, ids, grad_s, alpha=cfg.lambda_kl)
        else:
            kl_b, grad_v = full_vocab_kl_block(z, ref_full[block].detach().to(compute), temp)
            g.add_(grad_v, alpha=cfg.lambda_kl)
            del grad_v
        kl_rows[block] = kl_b
        g.mul_(inv_n).masked_fill_(~labelled[block, None], 0.0)
        grad[block] = g  # last: with inplace_grad this overwrites the block just read
        del z, g

    ce_rows = torch.where(labelled, ce_rows, 0)
    kl_rows = torch.where(labelled, kl_rows, 0)
    ce = ce_rows.sum() * inv_n
    kl = kl_rows.sum() * inv_n
    loss = ce + cfg.lambda_kl * kl
    gate = torch.where(labelled, gate, 0).float()
    return loss, ce, kl, gate, n, grad, ce_rows.float(), kl_rows.float()
