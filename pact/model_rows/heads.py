"""The output head of a causal LM, whole or restricted to the safety tokens.

- :func:`causal_lm_of`: the ``transformers`` causal LM inside the wrappers;
- :class:`OutputHead` / :func:`output_head`: the head's parameters (gathered
  under ZeRO-3) for the fused linear losses (``fused_linear: true``);
- :class:`SafetyHead`: the K rows of the head, copied once, so that the
  reference never computes the full vocabulary;
- :func:`full_logits`: ``[rows, V]`` logits with the model's soft-cap;
- :func:`label_log_probs`: each row's label log-probability through the
  fused linear cross-entropy (the reference of constrained SFT).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from pact_kernels import fused_linear_cross_entropy

from ..distributed import gathered


def causal_lm_of(model):
    """The ``transformers`` causal LM inside a DeepSpeed engine / :class:`~pact.model_rows.RowModel` / peft
    model, or the model itself."""
    model = getattr(model, "module", model)  # DeepSpeed engine
    from .row_model import RowModel  # the row model imports this module

    if isinstance(model, RowModel):
        model = model.model
    if hasattr(model, "get_base_model"):      # peft
        model = model.get_base_model()
    return model


def final_logit_softcap(causal_lm) -> float | None:
    """Gemma-2 style ``final_logit_softcapping`` of the model's config (None when absent)."""
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    return float(cap) if cap else None


def full_logits(causal_lm, hidden: torch.Tensor) -> torch.Tensor:
    """``[rows, V]`` logits of the output head on ``[rows, H]`` hidden states (soft-cap applied), in the
    head's dtype."""
    logits = causal_lm.get_output_embeddings()(hidden)
    cap = final_logit_softcap(causal_lm)
    return cap * torch.tanh(logits / cap) if cap else logits


@dataclass
class OutputHead:
    """The output head of a causal LM: ``weight`` ``[V, H]``, ``bias`` ``[V]`` or None, the soft-cap or None."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    softcap: float | None


@contextlib.contextmanager
def output_head(model):
    """The :class:`OutputHead` of ``model`` (causal LM, peft model, RowModel or engine), gathered under ZeRO-3.

    The parameters themselves (not copies), so a gradient computed from them
    inside the block reaches them (and DeepSpeed) in backward. Raises
    ValueError for a head that is not a plain ``nn.Linear`` (a LoRA adapter on
    the head): the fused head would leave its update out.
    """
    lm = causal_lm_of(getattr(model, "module", model))  # a row caller's module may be a DeepSpeed engine
    head = lm.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        raise ValueError(f"fused_linear needs a plain nn.Linear output head, got {type(head).__name__} (an adapter on "
                         "the head?); drop the head from lora_target_modules or set fused_linear=false")
    params = [head.weight] + ([head.bias] if head.bias is not None else [])
    with gathered(params):
        yield OutputHead(head.weight, head.bias, final_logit_softcap(lm))


def label_log_probs(causal_lm, hidden: torch.Tensor, labels: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """``log softmax(head(hidden))[label]`` per row, through the fused linear cross-entropy's row chunks.

    The head's weight is gathered once (ZeRO-3), so every rank makes the same
    collective calls whatever its number of rows; no ``[rows, V]`` logits exist.

    Args:
        causal_lm: the ``transformers`` causal LM (its output head and soft-cap).
        hidden: ``[rows, H]`` final hidden states (model dtype).
        labels: ``[rows]`` int64 target ids.
        chunk_rows: rows per chunk (default: :func:`pact_kernels.fused_linear.default_chunk_rows`).

    Returns:
        ``[rows]`` float32 log-probabilities (no gradient).
    """
    with output_head(causal_lm) as head, torch.no_grad():
        h = hidden.detach()
        weight = head.weight.detach().to(h.dtype)
        bias = None if head.bias is None else head.bias.detach().to(h.dtype)
        out = fused_linear_cross_entropy(h, weight, labels.to(h.device), bias=bias, softcap=head.softcap,
                                         chunk_rows=chunk_rows)
    return -out.ce_rows


class SafetyHead(torch.nn.Module):
    """The output head restricted to the K safety ids.

    ``weight`` and ``bias`` are buffers (not saved in a state dict): as a
    submodule of :class:`~pact.model_rows.RowModel` they move with the model
    (``.to(device)``, DeepSpeed's placement), so the reference never copies
    them per call.

    Args:
        weight: ``[K, H]`` rows of the output embedding.
        bias: ``[K]`` or None.
        softcap: the model's final-logit soft-cap, or None.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, softcap: float | None = None):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.softcap = softcap

    @classmethod
    def from_model(cls, model, safety_ids: torch.Tensor) -> "SafetyHead":
        """Copy the K rows of ``model``'s output embedding (gathered under ZeRO-3); ``safety_ids`` ``[K]`` int64."""
        lm = causal_lm_of(model)
        head = lm.get_output_embeddings()
        params = [head.weight] + ([head.bias] if getattr(head, "bias", None) is not None else [])
        with gathered(params), torch.no_grad():
            ids = safety_ids.to(head.weight.device)
            weight = head.weight[ids].detach().clone()
            bias = head.bias[ids].detach().clone() if getattr(head, "bias", None) is not None else None
        return cls(weight, bias, final_logit_softcap(lm))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[rows, H]`` hidden -> ``[rows, K]`` float32 logits on S."""
        if self.weight.device != hidden.device:  # a model moved outside the module tree: follow it, once
            self.to(hidden.device)
        weight, bias = self.weight, self.bias
        if weight.dtype != hidden.dtype:  # a cast on the device, never stored (the rows keep their precision)
            weight, bias = weight.to(hidden.dtype), None if bias is None else bias.to(hidden.dtype)
        logits = torch.nn.functional.linear(hidden, weight, bias).float()
        return self.softcap * torch.tanh(logits / self.softcap) if self.softcap else logits
