"""The ``naive`` backend: SPEC §3 transcribed line by line in plain PyTorch.

This is the oracle every other backend is tested against: full-vocabulary
tensors, autograd for the gradient, nothing fused. It computes in float32
(float64 when the logits are float64: call it on ``logits.double()`` for the
float64 oracle).
"""
from __future__ import annotations

import torch

from .config import PACTConfig
from .formulas import dispersion, position_decay
from .output import PACTLossOutput


def on_safety_set(ref: torch.Tensor, safety_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Reference logits on S: ``ref`` itself when ``[rows, K]``, else ``ref[:, safety_ids]``.

    A ``[rows, V]`` input is recognised by its width; when K == V the columns
    are taken to be in vocabulary order and gathered.
    """
    if ref.shape[1] == vocab_size:
        return ref[:, safety_ids]
    return ref


def naive_pact_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_full: torch.Tensor | None,
    ref_post: torch.Tensor | None,
    safety_ids: torch.Tensor,
    safety_weights: torch.Tensor,
    answer_pos: torch.Tensor | None,
    cfg: PACTConfig,
) -> PACTLossOutput:
    """PACT loss by direct transcription (inputs already checked).

    Args:
        logits: ``[rows, V]`` fine-tuned logits z (float32/bf16/fp16/fp64).
        labels: ``[rows]`` int64 targets, ``cfg.ignore_index`` on unlabelled rows.
        ref_full: ``[rows, K]`` or ``[rows, V]`` reference logits, full context.
        ref_post: ``[rows, K]`` or ``[rows, V]`` reference logits, no-prompt view
            (only read by the gated variants).
        safety_ids: ``[K]`` int64 ids of S.
        safety_weights: ``[K]`` float weights w ≥ 0.
        answer_pos: ``[rows]`` int64 answer positions t (only read by ``pact``).
        cfg: the hyper-parameters.
    """
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    labelled = labels != cfg.ignore_index
    # Unlabelled rows are never read (pact_kernels.nonfinite): zeroed, so NaN there reaches no gradient.
    z = torch.where(labelled[:, None], logits.to(compute), 0)
    ref_full, ref_post = (None if r is None else torch.where(labelled[:, None], r, 0) for r in (ref_full, ref_post))
    rows, vocab = z.shape
    ids = safety_ids.long()
    temp = cfg.kl_temperature

    n = labelled.sum()
    target = torch.where(labelled, labels, 0).long()

    # CE_row = −log softmax(z)[y] over the full vocabulary.
    log_probs = torch.log_softmax(z, dim=-1)
    ce_rows = -log_probs.gather(1, target[:, None]).squeeze(1)

    gate = torch.zeros(rows, dtype=compute, device=z.device)
    if cfg.variant == "full_vocab":
        # KL_row = T² Σ_V softmax(r_full/T)·(log softmax(r_full/T) − log softmax(z/T))
        log_p_ref = torch.log_softmax(ref_full.detach().to(compute) / temp, dim=-1)
        p_ref = log_p_ref.exp()
        log_p_ft = torch.log_softmax(z / temp, dim=-1)
        terms = torch.where(p_ref > 0, p_ref * (log_p_ref - log_p_ft), torch.zeros_like(p_ref))
        kl_rows = temp**2 * terms.sum(dim=-1)
    else:
        z_s = z[:, ids]
        r_full = on_safety_set(ref_full.detach(), ids, vocab).to(compute)
        if cfg.variant == "safety_tokens":
            w = torch.ones(ids.numel(), dtype=compute, device=z.device)
        else:
            w = safety_weights.detach().to(compute)

        if cfg.uses_gate:
            r_post = on_safety_set(ref_post.detach(), ids, vocab).to(compute)
            # 1. restricted softmaxes at the gate temperature; 2. dispersions.
            q_ft = torch.softmax(z_s.detach() / cfg.gate_temperature, dim=-1)
            q_post = torch.softmax(r_post / cfg.gate_temperature, dim=-1)
            i_ft = dispersion(q_ft, cfg.mass_threshold)
            i_post = dispersion(q_post, cfg.mass_threshold)
            # 3. gate, then position decay (pact only).
            gate = torch.sigmoid(cfg.gate_scale * (i_ft - i_post - cfg.gate_bias))
            if cfg.uses_decay:
                gate = gate * position_decay(answer_pos, cfg.decay_start, cfg.decay_tau, compute)
            # 4. mixed reference logits on S.
            mixed = (1 - gate)[:, None] * r_full + gate[:, None] * r_post
        else:
            mixed = r_full

        # 5. p_ref(v) ∝ w(v)·exp(m(v)/T); w = 0 gives p_ref = 0.
        positive = w > 0
        log_unnormalised = torch.where(positive, torch.log(w) + mixed / temp, float("-inf"))
        log_p_ref = log_unnormalised - torch.logsumexp(log_unnormalised, dim=-1, keepdim=True)
        p_ref = log_p_ref.exp()
        # 6. p_ft = softmax(z[S]/T), restricted to S, no weights.
        log_p_ft = torch.log_softmax(z_s / temp, dim=-1)
        # 7. KL_row = T² Σ_{w>0} p_ref·(log p_ref − log p_ft).
        terms = torch.where(positive, p_ref * (log_p_ref - log_p_ft), torch.zeros_like(p_ref))
        kl_rows = temp**2 * terms.sum(dim=-1)

    denominator = n.clamp_min(1).to(compute)
    ce_rows = torch.where(labelled, ce_rows, 0)
    kl_rows = torch.where(labelled, kl_rows, 0)
    ce = ce_rows.sum() / denominator
    kl = kl_rows.sum() / denominator
    loss = ce + cfg.lambda_kl * kl
    gate = torch.where(labelled, gate, 0).detach().float()
    return PACTLossOutput(loss=loss, ce=ce.detach(), kl=kl.detach(), gate=gate, num_rows=n,
                          ce_rows=ce_rows.detach().float(), kl_rows=kl_rows.detach().float())
