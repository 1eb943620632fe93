"""The one policy for non-finite inputs, shared by every backend (naive, torch, triton, cuda).

* Rows whose label is ``ignore_index`` are never read: NaN or ±inf there, in
  the logits or the reference logits, change nothing. Their ``ce_rows``,
  ``kl_rows`` and ``gate`` are 0 and their gradient rows exactly 0.
* In a labelled row a non-finite result is NaN, never ±inf: NaN or +inf in
  the row's logits make its ``ce_rows`` NaN (and its ``kl_rows`` when the
  value lies on S; non-finite reference logits the row reads make its
  ``kl_rows`` NaN), and the scalar ``loss`` (with ``ce`` or ``kl``) is then
  NaN too. The gradient of a NaN
  loss is not specified (the training driver stops before its backward).
  ``-inf`` logits are probability 0 and allowed; a row whose CE or KL would
  be +inf (its target, or a safety token the reference weighs, at ``-inf``)
  is NaN as well.
"""
from __future__ import annotations

import torch

from .output import PACTLossOutput


def _nan_unless_finite(x: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    bad = ~torch.isfinite(x)
    if where is not None:
        bad = bad & where
    return torch.where(bad, torch.full_like(x, float("nan")), x)


def apply_nonfinite_policy(out: PACTLossOutput, labels: torch.Tensor, ignore_index: int) -> PACTLossOutput:
    """``out`` with every non-finite result of a labelled row (and of the scalars) turned into NaN.

    Args:
        out: a backend's result.
        labels: ``[rows]`` integer targets (``ignore_index`` on unlabelled rows).
        ignore_index: the label of unlabelled rows.
    """
    labelled = labels != ignore_index
    return PACTLossOutput(loss=_nan_unless_finite(out.loss), ce=_nan_unless_finite(out.ce),
                          kl=_nan_unless_finite(out.kl), gate=out.gate, num_rows=out.num_rows,
                          ce_rows=_nan_unless_finite(out.ce_rows, labelled),
                          kl_rows=_nan_unless_finite(out.kl_rows, labelled))
