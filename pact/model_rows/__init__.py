"""What a causal LM gives the loss: its output at the loss rows, as the policy or as the frozen reference.

- :mod:`.row_model`: :class:`RowMode` (what a forward returns), :class:`RowModel`
  (the module DeepSpeed wraps), :func:`decoder_rows`;
- :mod:`.heads`: the output head (:class:`OutputHead`, :func:`output_head`),
  its K safety rows (:class:`SafetyHead`), :func:`full_logits`,
  :func:`label_log_probs`, :func:`causal_lm_of`;
- :mod:`.forward_patch`: :func:`patch_row_forward`, the same forward behind
  keyword arguments of the model's own (``PACTTrainer``).
"""
from .forward_patch import patch_row_forward
from .heads import (OutputHead, SafetyHead, causal_lm_of, final_logit_softcap, full_logits, label_log_probs,
                    output_head)
from .row_model import RowMode, RowModel, decoder_rows

__all__ = ["OutputHead", "RowMode", "RowModel", "SafetyHead", "causal_lm_of", "decoder_rows", "final_logit_softcap",
           "full_logits", "label_log_probs", "output_head", "patch_row_forward"]
