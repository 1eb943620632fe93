"""The two piecewise formulas of SPEC §3 shared by every PyTorch backend.

Both are constant for the gradient (I is piecewise constant, the decay depends
on positions only), so backends and the oracle call the same code.
"""
from __future__ import annotations

import torch

# The tie rule of the dispersion (SPEC §3 step 2): the cumulative mass, summed in float64 from the
# sorted float32 probabilities, counts as reaching τ_mass from τ_mass − 1e-6 on. At an exact tie (K
# equal entries, τ_mass·K whole) the k = τ_mass·K largest sum to τ_mass up to the rounding of the
# probabilities and of their summation, whose sign depends on the order (sequential, tree scan, lane
# chunks); the margin makes every backend count k = τ_mass·K there (without it, at K = 50 and
# τ_mass = 0.9, 45 on the CPU and 46 in the Triton and CUDA kernels). The triton and CUDA kernels
# use the same constant (pact_kernels/backends/triton_kernels.py, csrc/pact_loss.h) and float64 sums.
DISPERSION_TIE_TOLERANCE = 1e-6


def dispersion(q: torch.Tensor, mass_threshold: float) -> torch.Tensor:
    """Normalised dispersion ``I(q) = min{k : sum of the k largest q ≥ τ_mass − 1e-6} / K``.

    The 1e-6 is :data:`DISPERSION_TIE_TOLERANCE`, the tie rule every backend follows.

    Args:
        q: ``[rows, K]`` probabilities (each row sums to 1), any float dtype.
        mass_threshold: τ_mass in (0, 1].

    Returns:
        ``[rows]`` in ``q.dtype``, values in ``{1/K, 2/K, ..., 1}``. A one-hot row
        gives ``1/K``; a uniform row gives ``ceil(τ_mass·K)/K``.
    """
    k = q.shape[-1]
    # summed in float64 (as the kernels do): float32 scans err by up to ~1e-5 at K = 1000, beyond the margin
    cumulative = q.sort(dim=-1, descending=True).values.to(torch.float64).cumsum(dim=-1)
    # entries strictly below the threshold, plus the one that reaches it;
    # capped at K where rounding keeps the total just under τ_mass = 1.
    count = (cumulative < mass_threshold - DISPERSION_TIE_TOLERANCE).sum(dim=-1) + 1
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
