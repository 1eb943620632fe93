"""Shared inputs for the kernel tests: fresh random PACT batches (never zeros)."""
from __future__ import annotations

import torch


def random_batch(rows=12, vocab=97, k=7, dtype=torch.float32, ref_width="k", seed=0, ignore_every=5,
                 max_pos=24, scale=2.0):
    """A random PACT batch as a dict of pact_loss's positional arguments.

    ``logits [rows, V]`` (dtype), ``labels [rows]`` (every ``ignore_every``-th row -100),
    ``ref_full``/``ref_post`` ``[rows, K]`` or ``[rows, V]`` (``ref_width``),
    ``safety_ids [K]``, ``safety_weights [K]`` in (0.05, 1.05), ``answer_pos [rows]``
    spread across ``[0, max_pos)`` so rows fall both before and after decay_start.
    """
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(rows, vocab, generator=g, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, vocab, (rows,), generator=g)
    if ignore_every:
        labels[::ignore_every] = -100
    ids = torch.randperm(vocab, generator=g)[:k]
    weights = torch.rand(k, generator=g, dtype=torch.float64).float() + 0.05
    width = k if ref_width == "k" else vocab
    ref_full = (scale * torch.randn(rows, width, generator=g, dtype=torch.float64)).to(dtype)
    ref_post = (scale * torch.randn(rows, width, generator=g, dtype=torch.float64)).to(dtype)
    answer_pos = torch.randint(0, max_pos, (rows,), generator=g)
    return dict(logits=logits, labels=labels, ref_full=ref_full, ref_post=ref_post, safety_ids=ids,
                safety_weights=weights, answer_pos=answer_pos)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Norm-wise relative error ``‖actual − expected‖ / ‖expected‖`` in float64."""
    a, e = actual.detach().double(), expected.detach().double()
    return float((a - e).norm() / e.norm().clamp_min(1e-300))

