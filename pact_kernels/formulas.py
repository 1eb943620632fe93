"""The two piecewise formulas of SPEC §3 shared by every PyTorch backend.

Both are constant for the gradient (I is piecewise constant, the decay depends
on positions only), so backends and the oracle call the same code.
"""
from __future__ import annotations

import torch


def dispersion(q: torch.Tensor, mass_threshold: float) -> torch.Tensor:
    """Normalised dispersion ``I(q) = min{k : sum of the k largest q ≥ τ_mass} / K``.

    Args:
        q: ``[rows, K]`` probabilities (each row sums to 1), any float dtype.
        mass_threshold: τ_mass in (0, 1].

    Returns:
        ``[rows]`` in ``q.dtype``, values in ``{1/K, 2/K, ..., 1}``. A one-hot row
        gives ``1/K``; a uniform row gives ``ceil(τ_mass·K)/K``.
    """
    k = q.shape[-1]
    cumulative = q.sort(dim=-1, descending=True).values.cumsum(dim=-1)
    # entries strictly below the threshold, plus the one that reaches it;
    # capped at K where rounding keeps the total just under τ_mass = 1.
    count = (cumulative < mass_threshold).sum(dim=-1) + 1
    return count.clamp(max=k).to(q.dtype) / k


def position_decay(answer_pos: torch.Tensor, decay_start: int, decay_tau: float, dtype: torch.dtype) -> torch.Tensor:
    """Decay factor ``1`` for ``t < N`` and ``exp(−(t − N)/τ)`` for ``t ≥ N``.

    Args:
        answer_pos: ``[rows]`` integer, 0-based index of each row in its answer.
        decay_start: N.
        decay_tau: τ.
        dtype: float dtype of the result.

    Returns:
        ``[rows]`` in ``dtype``.
    """
    t = answer_pos.to(dtype)
    return torch.exp(-(t - decay_start).clamp_min(0) / decay_tau)
