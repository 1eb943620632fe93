"""The typed values a reference gives a method (:meth:`pact.methods.Method.reference_for`)."""
from __future__ import annotations

from typing import Any, NamedTuple

import torch


class ReferenceLogits(NamedTuple):
    """The frozen reference's logits at a batch's loss rows, float32.

    ``full``: on the full view (prompt and answer), ``[rows, K]`` on the safety
    tokens, or ``[rows, V]`` for the ``full_vocab`` variant; ``post``: on the
    no-prompt view, ``[rows, K]``, or None with ``full_vocab`` (it needs none).
    Unpacks as ``full, post = reference_logits``.
    """

    full: torch.Tensor
    post: torch.Tensor | None


class ReferenceHidden(NamedTuple):
    """The frozen reference before its output head, for the fused ``full_vocab`` loss.

    ``hidden``: ``[rows, H]`` final hidden states at the full view's rows
    (model dtype); ``source``: the :class:`~pact.reference.OnlineReference`
    that made them, whose :meth:`~pact.reference.OnlineReference.head` gives
    the output head to apply chunk by chunk.
    """

    hidden: torch.Tensor
    source: Any

    def head(self):
        """Context giving the reference's :class:`~pact.model_rows.OutputHead`, or None when it is the
        policy's own head (LoRA)."""
        return self.source.head()
