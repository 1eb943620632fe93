"""The ``naive`` backend: SPEC §3 transcribed line by line in plain PyTorch.

This is the oracle every other backend is tested against: full-vocabulary
tensors, autograd for the gradient, nothing fused. It computes in float32
(float64 when the logits are float64: call it on ``logits.double()`` for the
float64 oracle).
"""
from __future__ import annotations

import torch

from ..config import PACTConfig
from ..formulas import dispersion, position_decay
from ..inputs import PACTInputs, on_safety_set
from ..output import KernelResult, PACTLossOutput
from .common import finish


def naive_pact_loss(logits: torch.Tensor, inputs: PACTInputs, cfg: PACTConfig) -> PACTLossOutput:
    """PACT loss by direct transcription (inputs already checked), ``loss`` differentiable by autograd.

    Args:
        logits: ``[rows, V]`` fine-tuned logits z (float32/bf16/fp16/fp64).
        inputs: the targets, references and safety set (:class:`PACTInputs`).
        cfg: the hyper-parameters.
    """
    r = loss_terms(logits, inputs, cfg)
    return PACTLossOutput(loss=r.loss, ce=r.ce.detach(), kl=r.kl.detach(), gate=r.gate.detach(),
                          num_rows=r.num_rows, ce_rows=r.ce_rows.detach(), kl_rows=r.kl_rows.detach())


def forward_with_grad(logits: torch.Tensor, inputs: PACTInputs, cfg: PACTConfig, *, chunk_rows=None,
                      inplace_grad: bool = False) -> KernelResult:
    """The backend protocol (:mod:`pact_kernels.backends`): :func:`loss_terms` and its autograd gradient."""
    del chunk_rows, inplace_grad
    z = logits.detach().requires_grad_()
    with torch.enable_grad():
        r = loss_terms(z, inputs, cfg)
        (grad,) = torch.autograd.grad(r.loss, z)
    return r._replace(loss=r.loss.detach(), grad=grad)


def loss_terms(logits: torch.Tensor, inputs: PACTInputs, cfg: PACTConfig) -> KernelResult:
    """:func:`naive_pact_loss`'s terms as a :class:`KernelResult` (``grad`` None; ``loss`` on the graph)."""
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    labelled = inputs.labelled(cfg.ignore_index)
    # Unlabelled rows are never read (pact_kernels.nonfinite): zeroed, so NaN there reaches no gradient.
    z = torch.where(labelled[:, None], logits.to(compute), 0)
    ref_full, ref_post = (None if r is None else torch.where(labelled[:, None], r.detach(), 0)
                          for r in (inputs.ref_full, inputs.ref_post))
    target = torch.where(labelled, inputs.labels, 0).long()

    # CE_row = −log softmax(z)[y] over the full vocabulary.
    ce_rows = -torch.log_softmax(z, dim=-1).gather(1, target[:, None]).squeeze(1)
    if cfg.variant == "full_vocab":
        kl_rows = full_vocab_kl(z, ref_full.to(compute), cfg.kl_temperature)
        gate = torch.zeros(z.shape[0], dtype=compute, device=z.device)
    else:
        kl_rows, gate = safety_set_kl(z, ref_full, ref_post, inputs, cfg)
    return finish(ce_rows, kl_rows, gate.detach(), labelled, labelled.sum(), cfg)


def full_vocab_kl(z: torch.Tensor, ref: torch.Tensor, temp: float) -> torch.Tensor:
    """``[rows]`` KL_row = T² Σ_V softmax(r/T)·(log softmax(r/T) − log softmax(z/T)); ``z``, ``ref`` ``[rows, V]``."""
    log_p_ref = torch.log_softmax(ref / temp, dim=-1)
    p_ref = log_p_ref.exp()
    log_p_ft = torch.log_softmax(z / temp, dim=-1)
    terms = torch.where(p_ref > 0, p_ref * (log_p_ref - log_p_ft), torch.zeros_like(p_ref))
    return temp**2 * terms.sum(dim=-1)


def safety_set_kl(z: torch.Tensor, ref_full: torch.Tensor, ref_post, inputs: PACTInputs, cfg: PACTConfig):
    """``([rows] KL_row, [rows] gate)`` of the safety-set variants, SPEC §3 steps 1-7.

    ``z`` ``[rows, V]`` in the compute dtype; ``ref_full`` / ``ref_post`` ``[rows, K]`` or ``[rows, V]``.
    """
    compute = z.dtype
    ids = inputs.safety_ids.long()
    z_s = z[:, ids]
    r_full = on_safety_set(ref_full, ids, z.shape[1]).to(compute)
    w = inputs.kl_weights(cfg, compute)
    gate = torch.zeros(z.shape[0], dtype=compute, device=z.device)
    mixed = r_full
    if cfg.uses_gate:
        r_post = on_safety_set(ref_post, ids, z.shape[1]).to(compute)
        # 1. restricted softmaxes at the gate temperature; 2. dispersions.
        i_ft = dispersion(torch.softmax(z_s.detach() / cfg.gate_temperature, dim=-1), cfg.mass_threshold)
        i_post = dispersion(torch.softmax(r_post / cfg.gate_temperature, dim=-1), cfg.mass_threshold)
        # 3. gate, then position decay (pact only).
        gate = torch.sigmoid(cfg.gate_scale * (i_ft - i_post - cfg.gate_bias))
        if cfg.uses_decay:
            gate = gate * position_decay(inputs.answer_pos, cfg.decay_start, cfg.decay_tau, compute)
        # 4. mixed reference logits on S.
        mixed = (1 - gate)[:, None] * r_full + gate[:, None] * r_post
    temp = cfg.kl_temperature
    # 5. p_ref(v) ∝ w(v)·exp(m(v)/T); w = 0 gives p_ref = 0.
    positive = w > 0
    log_unnormalised = torch.where(positive, torch.log(w) + mixed / temp, float("-inf"))
    log_p_ref = log_unnormalised - torch.logsumexp(log_unnormalised, dim=-1, keepdim=True)
    p_ref = log_p_ref.exp()
    # 6. p_ft = softmax(z[S]/T), restricted to S, no weights.
    log_p_ft = torch.log_softmax(z_s / temp, dim=-1)
    # 7. KL_row = T² Σ_{w>0} p_ref·(log p_ref − log p_ft).
    terms = torch.where(positive, p_ref * (log_p_ref - log_p_ft), torch.zeros_like(p_ref))
    return temp**2 * terms.sum(dim=-1), gate
