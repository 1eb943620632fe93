"""The choice of S and its weights from the discrepancy scores (SPEC §1.4): the paper's rule and the authors'."""
from __future__ import annotations

import torch

from .presets import WEIGHT_DTYPE_NAMES
from .tokens import SELECTIONS

__all__ = ["WEIGHT_DTYPES", "select_tokens"]

WEIGHT_DTYPES = {name: getattr(torch, name) for name in WEIGHT_DTYPE_NAMES}


def select_tokens(d: torch.Tensor, mean_safe_prob: torch.Tensor, k: int = 50, selection: str = "paper", *,
                  std_min_abs_d: float | None = None, norm_eps: float = 0.0, weights_dtype: str = "float64"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick S and its weights (SPEC §1.4).

    Args:
        d: ``[V]`` float64 discrepancy scores d(v).
        mean_safe_prob: ``[V]`` float64 mean aligned probabilities p̄_safe(v).
        std_min_abs_d: ``authors`` only, the authors' filter (their code:
            1e-9): tokens with d(v) = 0 leave S, only those with
            ``|d(v)| > std_min_abs_d`` are standardised (mean and std over
            them), the others keep d(v) as is before the L2 normalisation, and
            a value that rounds to 0 leaves S. None: every token of S is
            standardised.
        norm_eps: ``authors``: added to the std and to the L2 norm (the
            authors' code: 1e-6); 0 divides by them exactly.
        weights_dtype: round the weights through this dtype (``float64``: no
            rounding; the authors save ``bfloat16``).
    Returns:
        ``ids`` ``[K']`` int64 and ``weights`` ``[K']`` float64, ordered by d(v)
        descending (ties: lower id first). ``paper``: top-K by d among d > 0,
        w = d (K' <= K). ``authors``: top-K by p̄_safe, d standardised over S,
        L2-normalised, w = max(., 0).
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    if (std_min_abs_d is not None and std_min_abs_d < 0) or norm_eps < 0:
        raise ValueError("std_min_abs_d and norm_eps must be >= 0")
    if selection == "paper" and (std_min_abs_d is not None or norm_eps):
        raise ValueError("std_min_abs_d and norm_eps (--std-min-abs-d, --norm-eps) apply to selection='authors'")
    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {tuple(WEIGHT_DTYPES)}, got {weights_dtype!r}")
    if selection == "paper":
        order = torch.argsort(d, descending=True, stable=True)[:k]
        ids = order[d[order] > 0]
        if ids.numel() == 0:
            raise ValueError("no token has d(v) > 0: the aligned model never puts more probability on any token "
                             "than the base model; check the model pair")
        return ids, _round(d[ids], weights_dtype)
    if selection == "authors":
        top = torch.argsort(mean_safe_prob, descending=True, stable=True)[:k]
        if std_min_abs_d is not None:
            top = top[d[top] != 0]
        ids = top[torch.argsort(d[top], descending=True, stable=True)]
        z = d[ids].clone()
        big = torch.ones_like(ids, dtype=torch.bool) if std_min_abs_d is None else z.abs() > std_min_abs_d
        centred = z[big] - z[big].mean()
        if int(big.sum()) < 2 or float(centred.abs().max()) == 0.0:
            raise ValueError("authors selection needs at least two tokens with different d(v) in S")
        z[big] = centred / (centred.std() + norm_eps)
        z = _round(z / (z.norm() + norm_eps), weights_dtype)
        if std_min_abs_d is not None:
            ids, z = ids[z != 0], z[z != 0]
        return ids, z.clamp_min(0.0)
    raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")


def _round(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """``x`` (float64) rounded to the nearest value of ``dtype``, returned in float64."""
    return x.to(WEIGHT_DTYPES[dtype]).to(torch.float64)
