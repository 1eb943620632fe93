"""The token-wise constrained objective of Qi et al. 2024 ("Safety Alignment Should Be Made More Than Just
a Few Tokens Deep", §4; public code ``Unispac/shallow-vs-deep-alignment``, ``soft_sft``).

The paper's objective, per answer token t with β_t > 0,

    L = -(1/n) Σ_t (2/β_t) · log σ(β_t · (log p_θ(y_t) - log p_ref(y_t)))

has the gradient of a cross-entropy whose token weight is

    w_t = 2 · (1 - σ(β_t · (log p_θ(y_t) - log p_ref(y_t))))

(paper App. D.2). As in the authors' code we compute it that way, which is
numerically stable: ``w_t`` detached and clamped at ``min_weight`` (1e-3),
loss = mean over the batch's answer tokens of ``-w_t · log p_θ(y_t)``. While
the policy is the reference, w_t = 1 and the loss is SFT's; a token whose
probability has risen far above the reference's gets a vanishing weight,
most sharply at the first tokens, where β_t is large.

β schedule (the authors' defaults, ``get_beta_list``): β_t = ``beta`` (0.1)
for later tokens, ``beta · bias_factor`` (0.1 · 20 = 2.0) for the first
``bias_length`` (5) tokens, of which the very first gets ``beta ·
first_token_bias_factor`` (0.1 · 5 = 0.5) instead. Their attack runs use
AdamW β1 = 0.5 (``adam_betas: [0.5, 0.999]``); the driver leaves that to the config.

The reference is the frozen aligned model (the adapter disabled, or a
frozen engine), asked only for log p_ref at each row's label
(``RowModel`` mode ``reference_label_logprob``).
"""
from __future__ import annotations

import torch

from .base import LossResult, Method, policy_cross_entropy


def beta_schedule(answer_pos: torch.Tensor, beta: float = 0.1, bias_factor: float = 20.0,
                  first_token_bias_factor: float = 5.0, bias_length: int = 5) -> torch.Tensor:
    """β_t for every row from its 0-based answer position.

    Args:
        answer_pos: ``[rows]`` int64, each row's index in its answer.

    Returns:
        ``[rows]`` float32: ``beta·first_token_bias_factor`` at position 0 (when
        ``bias_length`` > 0), ``beta·bias_factor`` at positions 1..bias_length-1,
        ``beta`` after.
    """
    pos = answer_pos.to(torch.long)
    betas = torch.full(pos.shape, float(beta), dtype=torch.float32, device=pos.device)
    betas = torch.where(pos < bias_length, torch.full_like(betas, beta * bias_factor), betas)
    if bias_length > 0:
        betas = torch.where(pos == 0, torch.full_like(betas, beta * first_token_bias_factor), betas)
    return betas


def token_weights(policy_logp: torch.Tensor, ref_logp: torch.Tensor, betas: torch.Tensor,
                  min_weight: float = 1e-3) -> torch.Tensor:
    """``w_t = max(2·(1 - σ(β_t·(log p_θ - log p_ref))), min_weight)``, detached; all ``[rows]`` float32."""
    w = 2.0 * (1.0 - torch.sigmoid(betas * (policy_logp.detach().float() - ref_logp.float())))
    return w.clamp(min=min_weight)


def check_csft_keys(beta: float, bias_factor: float, first_token_bias_factor: float, bias_length: int,
                    min_weight: float) -> None:
    """Raise ``ValueError`` naming the ``csft_*`` key and its range (the driver's and the trainer's configs)."""
    if beta <= 0:
        raise ValueError(f"csft_beta={beta} must be > 0 (Qi et al. use 0.1)")
    for name, value in (("csft_bias_factor", bias_factor), ("csft_first_token_bias_factor", first_token_bias_factor)):
        if value <= 0:
            raise ValueError(f"{name}={value} must be > 0 (it multiplies csft_beta)")
    if bias_length < 0:
        raise ValueError(f"csft_bias_length={bias_length} must be >= 0")
    if not 0.0 <= min_weight <= 2.0:
        raise ValueError(f"csft_min_weight={min_weight} must be in [0, 2] (the weight lies in (0, 2))")


class ConstrainedSFT(Method):
    """Qi et al.'s token-wise constrained fine-tuning (see the module doc for the formula and defaults).

    Args:
        beta, bias_factor, first_token_bias_factor, bias_length: the β schedule.
        min_weight: the clamp of the token weight.
    """

    name = "constrained_sft"
    needs_reference = True

    def __init__(self, beta: float = 0.1, bias_factor: float = 20.0, first_token_bias_factor: float = 5.0,
                 bias_length: int = 5, min_weight: float = 1e-3):
        self.beta, self.bias_factor, self.first_token_bias_factor = beta, bias_factor, first_token_bias_factor
        self.bias_length, self.min_weight = bias_length, min_weight

    def reference_for(self, reference, batch, fused: bool = False):
        """``[rows]`` float32: the reference's log-probability of each row's label."""
        return reference.label_logprobs(batch)

    def loss(self, batch, policy, reference=None) -> LossResult:
        """``policy``: ``[rows, V]`` logits or :class:`~pact.methods.base.HeadRows`;
        ``reference``: ``[rows]`` float32 log p_ref(y_t)."""
        betas = beta_schedule(batch.answer_pos, self.beta, self.bias_factor, self.first_token_bias_factor,
                              self.bias_length)
        ref_logp = reference.to(betas.device)
        weights = torch.zeros_like(betas)

        def row_weight(ce_rows, rows):  # ce_rows = -log p_θ of these rows, known once their logits are made
            w = token_weights(-ce_rows, ref_logp[rows], betas[rows], self.min_weight)
            weights[rows] = w
            return w

        loss, ce_rows = policy_cross_entropy(policy, batch.labels, row_weight=row_weight)
        return LossResult(loss, ce_rows, torch.zeros_like(ce_rows), weights)
