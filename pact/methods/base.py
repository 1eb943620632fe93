"""The method interface and the two methods of the paper: :class:`SFT` and :class:`PACT`.

A method turns the policy on the batch's loss rows (and, when it needs one,
the reference's output) into a loss and its metrics. The policy comes as
``[rows, V]`` logits (``fused_linear: false``) or as :class:`HeadRows`, the
hidden rows and the output head, which the fused linear losses of
``pact_kernels`` turn into the loss without ever holding ``[rows, V]`` logits. Hooks let a
method prepare the model before DeepSpeed wraps it (:meth:`Method.setup`) and
post-process the exported weights (:meth:`Method.finish`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pact_kernels import PACTConfig, fused_linear_cross_entropy, fused_linear_pact_loss, pact_loss_from_config

from ..data.collator import PACTBatch
from ..model_rows import OutputHead
from ..reference.values import ReferenceHidden, ReferenceLogits


@dataclass
class HeadRows:
    """The policy at the loss rows before its output head: ``hidden`` ``[rows, H]`` (model dtype, with
    gradient) and the head (its weight gathered for as long as the loss is computed)."""

    hidden: torch.Tensor
    head: OutputHead

    def head_args(self) -> dict:
        """The ``bias`` and ``softcap`` keywords of the fused losses."""
        return dict(bias=self.head.bias, softcap=self.head.softcap)


def policy_cross_entropy(policy, labels: torch.Tensor, backend: str = "auto", row_weight=None):
    """``(loss, ce_rows)``: the policy's cross-entropy at the rows, from logits or fused from :class:`HeadRows`.

    Args:
        policy: ``[rows, V]`` logits, or :class:`HeadRows`.
        labels: ``[rows]`` int64 targets (every row labelled).
        row_weight: None, or ``f(ce_rows, rows) -> w`` (see
            :func:`pact_kernels.fused_linear_cross_entropy`): loss ``mean(w·CE)``.

    Returns:
        ``loss`` (scalar with gradient) and ``ce_rows`` ``[rows]`` float32 (detached).
    """
    if isinstance(policy, HeadRows):
        out = fused_linear_cross_entropy(policy.hidden, policy.head.weight, labels, backend=backend,
                                         row_weight=row_weight, **policy.head_args())
        return out.loss, out.ce_rows
    ce_rows = torch.nn.functional.cross_entropy(policy.float(), labels, reduction="none")
    weighted = ce_rows if row_weight is None else row_weight(ce_rows.detach(), slice(0, ce_rows.numel())) * ce_rows
    loss = weighted.mean() if ce_rows.numel() else policy.sum() * 0.0
    return loss, ce_rows.detach()


@dataclass
class LossResult:
    """Loss of one micro-batch and the per-row numbers the logger splits by kind.

    ``loss``: differentiable scalar; ``ce_rows``/``kl_rows``/``row_weight``:
    ``[rows]`` float32, detached. ``row_weight`` is the method's weight of
    each row (logged as ``gate_mean``): PACT's gate c̃_t on the KL term,
    constrained SFT's token weight w_t on the cross-entropy, 0 for SFT.
    ``penalty``: a detached scalar added to the loss on top of the rows
    (AsFT's regulariser, already times λ), or None.
    """

    loss: torch.Tensor
    ce_rows: torch.Tensor
    kl_rows: torch.Tensor
    row_weight: torch.Tensor
    penalty: torch.Tensor | None = None


class Method:
    """Base class. ``needs_reference``: whether the driver must set up a frozen reference;
    ``full_vocab``: whether the reference's full-view logits must cover the whole vocabulary (and it gives no
    no-prompt view's); ``needs_base_model``: whether it reads the unaligned base model's weights, which only
    the driver (``pact train``) loads, so that :class:`pact.trl.PACTTrainer` cannot run it."""

    name = "method"
    needs_reference = False
    full_vocab = False
    needs_base_model = False

    def setup(self, model) -> None:
        """Called with the :class:`~pact.model_rows.RowModel` after it is built, before DeepSpeed wraps it."""

    def place(self, device) -> None:
        """Called once the model is on ``device`` (after DeepSpeed places it): move the method's own tensors
        there, so that no step copies them."""

    def reference_for(self, reference, batch: PACTBatch, fused: bool = False):
        """What :meth:`loss` gets as ``reference`` from an :class:`~pact.reference.OnlineReference` or a
        :class:`~pact.reference.ReferenceCache`: by default the batch's :class:`~pact.reference.ReferenceLogits`
        (``fused`` and ``full_vocab``: a :class:`~pact.reference.ReferenceHidden`, see :class:`PACT`)."""
        if fused and self.full_vocab:
            return ReferenceHidden(reference.hidden(batch), reference)
        return reference(batch, self.full_vocab)

    def loss(self, batch: PACTBatch, policy, reference=None) -> LossResult:
        """``policy``: ``[rows, V]`` policy logits on the batch's rows (model dtype), or :class:`HeadRows`."""
        raise NotImplementedError  # pragma: no cover - interface

    def finish(self, run_dir, rank: int) -> None:
        """Called on every rank after the final weights are exported to ``run_dir/final``."""


class SFT(Method):
    """Plain supervised fine-tuning: token-level mean cross-entropy over the answer rows."""

    name = "sft"

    def loss(self, batch, policy, reference=None) -> LossResult:
        loss, ce_rows = policy_cross_entropy(policy, batch.labels)
        zeros = torch.zeros_like(ce_rows)
        return LossResult(loss, ce_rows, zeros, zeros)


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

    def place(self, device) -> None:
        self.safety_ids = self.safety_ids.to(device)
        self.safety_weights = self.safety_weights.to(device)

    def _safety_set(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [K] int64, weights [K] float32)`` on ``device``; moved there on first use only."""
        if self.safety_ids.device != device or self.safety_weights.device != device:
            self.place(device)
        return self.safety_ids, self.safety_weights

    @property
    def full_vocab(self) -> bool:
        """True when the reference must give full-vocabulary logits on the full view (``full_vocab``)."""
        return self.config.variant == "full_vocab"

    def loss(self, batch, policy, reference: ReferenceLogits | ReferenceHidden | None = None) -> LossResult:
        """``reference``: :class:`~pact.reference.ReferenceLogits` (or a ``(full, post)`` pair); with fused
        ``full_vocab``, :class:`~pact.reference.ReferenceHidden`."""
        if isinstance(policy, HeadRows):
            return self._fused_loss(batch, policy, reference)
        logits = policy
        ref_full, ref_post = reference
        out = pact_loss_from_config(
            logits, batch.labels, ref_full, ref_post, *self._safety_set(logits.device), batch.answer_pos, self.config,
            backend=self.backend, inplace_grad=True,  # the head's backward never reads its output
        )
        return LossResult(out.loss, out.ce_rows, out.kl_rows, out.gate)

    def _fused_loss(self, batch, policy: HeadRows, reference) -> LossResult:
        """:func:`fused_linear_pact_loss` on the hidden rows; ``full_vocab`` makes the reference's logits
        chunk by chunk from its hidden rows and head (a :class:`~pact.reference.ReferenceHidden`)."""
        common = dict(backend=self.backend, **policy.head_args(), **self.config.as_kwargs())
        args = (policy.hidden, policy.head.weight, batch.labels)
        tail = (*self._safety_set(policy.hidden.device), batch.answer_pos)
        if not self.full_vocab:
            ref_full, ref_post = reference
            out = fused_linear_pact_loss(*args, ref_full, ref_post, *tail, **common)
        else:
            with reference.head() as ref_head:  # None: the policy's own (frozen) head, LoRA
                ref = {} if ref_head is None else dict(ref_weight=ref_head.weight, ref_bias=ref_head.bias)
                out = fused_linear_pact_loss(*args, None, None, *tail, ref_hidden=reference.hidden, **ref, **common)
        return LossResult(out.loss, out.ce_rows, out.kl_rows, out.gate)
