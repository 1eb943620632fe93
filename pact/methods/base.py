"""The method interface and the two methods of the paper: :class:`SFT` and :class:`PACT`.

A method turns the policy's logits on the batch's loss rows (and, when it
needs one, the reference's output) into a loss and its metrics. Hooks let a
method prepare the model before DeepSpeed wraps it (:meth:`Method.setup`) and
post-process the exported weights (:meth:`Method.finish`).
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
    float32, detached (``gate`` is a method's per-row weight: PACT's gate,
    constrained SFT's token weight); ``penalty``: a detached scalar added to
    the loss on top of the rows (AsFT's regulariser, already times λ), or None.
    """

    loss: torch.Tensor
    ce_rows: torch.Tensor
    kl_rows: torch.Tensor
    gate: torch.Tensor
    penalty: torch.Tensor | None = None


class Method:
    """Base class. ``needs_reference``: whether the driver must set up a frozen reference;
    ``full_vocab``: whether ``r_full`` must cover the whole vocabulary (``r_post`` is then None)."""

    name = "method"
    needs_reference = False
    full_vocab = False

    def setup(self, model) -> None:
        """Called with the :class:`~pact.reference.RowModel` after it is built, before DeepSpeed wraps it."""

    def reference_for(self, reference, batch: PACTBatch):
        """What :meth:`loss` gets as ``reference``: by default ``(r_full, r_post)`` of the batch."""
        return reference(batch, self.full_vocab)

    def loss(self, batch: PACTBatch, logits: torch.Tensor, reference=None) -> LossResult:
        """``logits``: ``[rows, V]`` policy logits on the batch's rows (model dtype)."""
        raise NotImplementedError  # pragma: no cover - interface

    def finish(self, run_dir, rank: int) -> None:
        """Called on every rank after the final weights are exported to ``run_dir/final``."""


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
