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


def _nan_unless_finite(x: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    bad = ~torch.isfinite(x)
    if where is not None:
        bad = bad & where
    return torch.where(bad, torch.full_like(x, float("nan")), x)


def nonfinite_to_nan(loss, ce, kl, ce_rows, kl_rows, labelled: torch.Tensor):
    """The policy on a backend's results: every non-finite value of the scalars ``loss``, ``ce``, ``kl`` and of
    the labelled rows (``labelled``: ``[rows]`` bool) of ``ce_rows`` / ``kl_rows`` (``[rows]`` or None) is NaN.

    Values only: :func:`pact_kernels.backends.common.finish`, the epilogue of
    every backend, calls it (the naive backend's on its autograd graph).
    """
    rows = [None if r is None else _nan_unless_finite(r, labelled) for r in (ce_rows, kl_rows)]
    return (_nan_unless_finite(loss), _nan_unless_finite(ce), _nan_unless_finite(kl), *rows)
