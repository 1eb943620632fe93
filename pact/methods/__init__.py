"""Training objectives of the driver: one class per method, one job each.

A method turns the policy's logits on the batch's loss rows (and, when it
needs one, the reference's K-token logits) into a loss and its metrics. Add
a method by subclassing :class:`Method` and registering it in :data:`METHODS`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pact_kernels import PACTConfig, pact_loss_from_config

from ..data.collator import PACTBatch


@dataclass
class LossResult:
    """Loss of one micro-batch and the per-row numbers the logger splits by kind.

    ``loss``: differentiable scalar; ``ce_rows``/``kl_rows``/``gate``: ``[rows]``
    float32, detached.
    """

    loss: torch.Tensor
    ce_rows: torch.Tensor
    kl_rows: torch.Tensor
    gate: torch.Tensor


class Method:
    """Base class. ``needs_reference``: whether the driver must provide ``(r_full, r_post)``;
    ``full_vocab``: whether ``r_full`` must cover the whole vocabulary (``r_post`` is then None)."""

    name = "method"
    needs_reference = False
    full_vocab = False

    def loss(self, batch: PACTBatch, logits: torch.Tensor, reference=None) -> LossResult:
        """``logits``: ``[rows, V]`` policy logits on the batch's rows (model dtype)."""
        raise NotImplementedError  # pragma: no cover - interface


class SFT(Method):
    """Plain supervised fine-tuning: token-level mean cross-entropy over the answer rows."""

    name = "sft"

    def loss(self, batch, logits, reference=None) -> LossResult:
        ce_rows = torch.nn.functional.cross_entropy(logits.float(), batch.labels, reduction="none")
        loss = ce_rows.mean() if ce_rows.numel() else logits.sum() * 0.0
        zeros = torch.zeros_like(ce_rows)
        return LossResult(loss, ce_rows.detach(), zeros, zeros)


class PACT(Method):
    """The PACT objective (any rung of the ablation ladder) through :func:`pact_kernels.pact_loss`.

    Args:
        config: the loss hyper-parameters and variant.
        safety_ids: ``[K]`` int64; safety_weights: ``[K]`` float32.
        backend: the ``pact_kernels`` backend (``auto``).
    """

    needs_reference = True

    def __init__(self, config: PACTConfig, safety_ids: torch.Tensor, safety_weights: torch.Tensor,
                 backend: str = "auto"):
        self.config, self.backend = config, backend
        self.safety_ids, self.safety_weights = safety_ids, safety_weights
        self.name = config.variant

    @property
    def full_vocab(self) -> bool:
        """True when the reference must give full-vocabulary logits on the full view (``full_vocab``)."""
        return self.config.variant == "full_vocab"

    def loss(self, batch, logits, reference=None) -> LossResult:
        r_full, r_post = reference
        out = pact_loss_from_config(
            logits, batch.labels, r_full, r_post, self.safety_ids.to(logits.device),
            self.safety_weights.to(logits.device), batch.answer_pos, self.config,
            backend=self.backend, inplace_grad=True,  # the head's backward never reads its output
        )
        return LossResult(out.loss, out.ce_rows, out.kl_rows, out.gate)
