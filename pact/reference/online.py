"""The reference computed every step through a DeepSpeed engine (or ``PACTTrainer``'s row caller)."""
from __future__ import annotations

import contextlib

import torch

from ..data.collator import PACTBatch
from ..model_rows import RowMode, output_head
from .values import ReferenceLogits


class OnlineReference:
    """The reference computed every step through ``engine``, a DeepSpeed engine around a
    :class:`~pact.model_rows.RowModel` (or anything called as ``engine(ids, mask, rows, mode=..., labels=...)``).

    With LoRA pass the policy's own engine (the reference is the same network
    with the adapter off); for full fine-tuning, the frozen reference's engine
    and ``separate_head=True`` (its output head is not the policy's).
    """

    def __init__(self, engine, separate_head: bool = False):
        self.engine = engine
        self.separate_head = separate_head

    def hidden(self, batch: PACTBatch) -> torch.Tensor:
        """``[rows, H]`` the frozen model's final hidden states at the full view's rows (fused ``full_vocab``)."""
        return self.engine(batch.full_ids, batch.full_mask, batch.full_rows, mode=RowMode.REFERENCE_HIDDEN)

    def head(self):
        """Context giving the reference's :class:`~pact.model_rows.OutputHead`, or None when it is the
        policy's own head (LoRA)."""
        return output_head(self.engine) if self.separate_head else contextlib.nullcontext()

    def __call__(self, batch: PACTBatch, full_vocab: bool = False) -> ReferenceLogits:
        """Both views' ``[rows, K]`` float32 logits on S; with ``full_vocab``, ``full`` ``[rows, V]``, ``post``
        None."""
        if full_vocab:
            return ReferenceLogits(self.engine(batch.full_ids, batch.full_mask, batch.full_rows,
                                               mode=RowMode.REFERENCE_FULL), None)
        full = self.engine(batch.full_ids, batch.full_mask, batch.full_rows, mode=RowMode.REFERENCE)
        post = self.engine(batch.post_ids, batch.post_mask, batch.post_rows, mode=RowMode.REFERENCE)
        return ReferenceLogits(full, post)

    def label_logprobs(self, batch: PACTBatch) -> torch.Tensor:
        """``[rows]`` float32: the frozen model's log-probability of each label, on the full view."""
        return self.engine(batch.full_ids, batch.full_mask, batch.full_rows, mode=RowMode.REFERENCE_LABEL_LOGPROB,
                           labels=batch.labels)
