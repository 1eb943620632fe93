"""The discrepancy d(v) = E_t[p_safe(v | x, y_<t) − p_base(v | x, y_<t)]: teacher-forced logits at the answer
steps, and float64 sums over the whole vocabulary, one chunk of rows at a time."""
from __future__ import annotations

import inspect
from typing import Sequence

import torch

from .generation import pad_right

__all__ = ["accumulate_discrepancy", "answer_logits"]

#: Float64 elements per softmax chunk (two such chunks live at once: 2 x 128 MiB).
_CHUNK_ELEMS = 1 << 24


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def answer_logits(model, prefixes: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
                   ) -> torch.Tensor:
    """Teacher-forced logits at every answer step of a batch.

    Args:
        prefixes: per sequence the prompt ids (template included).
        responses: per sequence the answer ids y_1..y_T (T >= 1).
    Returns:
        ``[sum T_i, V]`` logits in the model's dtype: rows of sequence 0
        (steps 0..T_0-1), then sequence 1, ...; row t of sequence i predicts
        ``y_t`` from ``x, y_<t``. Right padding, mask from lengths.
    """
    seqs = [list(p) + list(r) for p, r in zip(prefixes, responses)]
    ids, mask = pad_right(seqs, pad_id)
    L = ids.shape[1]
    first = min(len(p) for p in prefixes) - 1           # first position any row needs
    keep = L - first
    device = next(model.parameters()).device
    kw = {"logits_to_keep": keep} if _accepts_logits_to_keep(model) else {}
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **kw).logits
    offset = L - logits.shape[1]                         # sequence position of logits[:, 0]
    rows = []
    for i, (p, r) in enumerate(zip(prefixes, responses)):
        s = len(p) - 1 - offset
        rows.append(logits[i, s: s + len(r)])
    return torch.cat(rows, 0)


def accumulate_discrepancy(safe_logits: torch.Tensor, base_logits: torch.Tensor, row_weights: torch.Tensor,
                           acc_d: torch.Tensor, acc_p: torch.Tensor) -> None:
    """Add ``Σ_rows w·(p_safe − p_base)`` to ``acc_d`` and ``Σ_rows w·p_safe`` to ``acc_p``, in place.

    Args:
        safe_logits, base_logits: ``[R, V]`` logits (any float dtype) of the
            same answer steps.
        row_weights: ``[R]`` float64 weight of each step (1, or 1/T per prompt).
        acc_d, acc_p: ``[V]`` float64 accumulators.
    Softmax runs in float64 over the full vocabulary, a chunk of rows at a time.
    """
    R, V = safe_logits.shape
    step = max(1, _CHUNK_ELEMS // V)
    for s in range(0, R, step):
        w = row_weights[s: s + step].to(acc_d.device, torch.float64)
        ps = torch.softmax(safe_logits[s: s + step].to(acc_d.device, torch.float64), dim=-1)
        pb = torch.softmax(base_logits[s: s + step].to(acc_d.device, torch.float64), dim=-1)
        acc_p.add_(w @ ps)
        acc_d.add_(w @ (ps.sub_(pb)))
