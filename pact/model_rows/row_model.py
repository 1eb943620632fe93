"""The causal LM as the loss sees it: the policy's or the reference's output at the loss rows only.

:class:`RowModel` is the module DeepSpeed wraps, so every forward (policy and
reference) goes through the engine and its ZeRO-3 hooks; :class:`RowMode`
says what a forward returns. With LoRA the reference is the policy network
with its adapter disabled (peft ``disable_adapter``): no second copy. For
full fine-tuning it is a second frozen model in its own DeepSpeed engine.
"""
from __future__ import annotations

import contextlib
from enum import Enum

import torch

from .heads import SafetyHead, causal_lm_of, full_logits, label_log_probs


class RowMode(str, Enum):
    """What :meth:`RowModel.forward` returns for ``rows`` loss rows (``H`` hidden size, ``V`` vocabulary,
    ``K`` safety tokens). A plain string with the member's value is accepted wherever a mode is.

    - ``POLICY`` (``"policy"``): ``[rows, V]`` logits of the trainable model, in
      its dtype, with gradient;
    - ``POLICY_HIDDEN`` (``"policy_hidden"``): ``[rows, H]`` final hidden states
      of the trainable model, in its dtype, with gradient (the fused linear losses);
    - ``REFERENCE`` (``"reference"``): ``[rows, K]`` float32 logits on S of the
      frozen model (no gradient, eval mode, LoRA adapter disabled when there is one);
    - ``REFERENCE_FULL`` (``"reference_full"``): ``[rows, V]`` float32 logits of
      the frozen model (the ``full_vocab`` variant);
    - ``REFERENCE_HIDDEN`` (``"reference_hidden"``): ``[rows, H]`` final hidden
      states of the frozen model, in its dtype (the fused ``full_vocab`` variant
      makes its logits chunk by chunk);
    - ``REFERENCE_LABEL_LOGPROB`` (``"reference_label_logprob"``): ``[rows]``
      float32 log-probability of ``labels`` under the frozen model (constrained
      SFT), the full-vocabulary log-softmax computed row-chunked.
    """

    POLICY = "policy"
    POLICY_HIDDEN = "policy_hidden"
    REFERENCE = "reference"
    REFERENCE_FULL = "reference_full"
    REFERENCE_HIDDEN = "reference_hidden"
    REFERENCE_LABEL_LOGPROB = "reference_label_logprob"

    @classmethod
    def parse(cls, mode: "RowMode | str") -> "RowMode":
        """The member for ``mode`` (a member or its value); ValueError naming the modes otherwise."""
        try:
            return cls(mode)
        except ValueError:
            raise ValueError(f"mode={mode!r}: use one of {', '.join(m.value for m in cls)}") from None

    @property
    def is_reference(self) -> bool:
        """True for the frozen model's modes (no gradient, adapter off)."""
        return self not in (RowMode.POLICY, RowMode.POLICY_HIDDEN)


def decoder_rows(causal_lm, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Final hidden states at the loss rows.

    Args:
        causal_lm: a ``transformers`` causal LM (``get_decoder()`` gives the trunk).
        input_ids: ``[B, L]`` int64.
        attention_mask: ``[B, L]`` int64.
        rows: ``[rows]`` int64 flat indices into ``[B*L]``.

    Returns:
        ``[rows, H]`` hidden states in the model's dtype.
    """
    hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return hidden.flatten(0, 1)[rows]


class RowModel(torch.nn.Module):
    """A causal LM (plain or peft) that returns its output at the loss rows only (see :class:`RowMode`).

    Args:
        model: a ``transformers`` causal LM, or a peft model around one.
    """

    MODES = tuple(m.value for m in RowMode)

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.safety_head: SafetyHead | None = None

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    def set_safety_ids(self, safety_ids: torch.Tensor) -> None:
        """Copy the K rows of the output embedding (``safety_ids`` ``[K]`` int64) for :attr:`RowMode.REFERENCE`
        (a submodule: moves with the model)."""
        self.safety_head = SafetyHead.from_model(self.model, safety_ids)

    def forward(self, input_ids, attention_mask, rows, mode: RowMode | str = RowMode.POLICY, labels=None):
        """The :class:`RowMode` ``mode``'s output at ``rows``.

        Args:
            input_ids, attention_mask: ``[B, L]`` int64.
            rows: ``[rows]`` int64 flat indices into ``[B*L]``.
            mode: a :class:`RowMode` or its value.
            labels: ``[rows]`` int64 (:attr:`RowMode.REFERENCE_LABEL_LOGPROB` only).
        """
        mode = RowMode.parse(mode)
        lm = causal_lm_of(self.model)
        if not mode.is_reference:
            hidden = decoder_rows(lm, input_ids, attention_mask, rows)
            return hidden if mode is RowMode.POLICY_HIDDEN else full_logits(lm, hidden)
        if mode is RowMode.REFERENCE_LABEL_LOGPROB and labels is None:
            raise ValueError("mode='reference_label_logprob' needs labels: the [rows] target ids")
        with self._frozen():
            hidden = decoder_rows(lm, input_ids, attention_mask, rows)
            if mode is RowMode.REFERENCE_FULL:
                return full_logits(lm, hidden).float()
            if mode is RowMode.REFERENCE_HIDDEN:
                return hidden
            if mode is RowMode.REFERENCE_LABEL_LOGPROB:
                return label_log_probs(lm, hidden, labels)
            return self.safety_head(hidden)

    @contextlib.contextmanager
    def _frozen(self):
        """The reference: no gradient, eval mode and the LoRA adapter off inside; the training mode restored after."""
        adapter_off = self.model.disable_adapter() if self.is_peft else contextlib.nullcontext()
        was_training = self.model.training
        self.eval()
        try:
            with torch.no_grad(), adapter_off:
                yield
        finally:
            self.train(was_training)
