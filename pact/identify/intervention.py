"""Inference-time intervention on a token set (paper §2.2, SPEC §2).

``boost`` adds α (default 5.0) to the set's logits at every decoding step
(optionally only for the first ``first_k`` generated tokens); ``ablate`` sets
them to −1e9. The control is a random set of the same size, disjoint from S,
drawn with a seed.

    proc = TokenSetLogitsProcessor(tokens.ids, mode="boost", alpha=5.0)
    model.generate(..., logits_processor=LogitsProcessorList([proc]))
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from transformers import LogitsProcessor

__all__ = ["ABLATE_VALUE", "MODES", "TokenSetLogitsProcessor", "random_control_set"]

MODES = ("boost", "ablate", "none")
ABLATE_VALUE = -1e9


class TokenSetLogitsProcessor(LogitsProcessor):
    """Boost or ablate the logits of a token set.

    Args:
        token_ids: the set (``list[int]`` or ``[K]`` int64 tensor).
        mode: ``boost`` (logits += alpha), ``ablate`` (logits = -1e9, or the
            dtype's lowest value if -1e9 does not fit), or ``none``.
        alpha: the boost.
        first_k: act only on the first ``first_k`` generated tokens.
        prompt_length: the (padded) prompt width, to count generated tokens;
            when ``None`` it is taken from the first call, so use one
            processor per ``generate`` call.
    ``__call__(input_ids [B, L] int64, scores [B, V] float) -> [B, V]``
    (a modified copy; the input is not written).
    """

    def __init__(self, token_ids: Sequence[int] | torch.Tensor, mode: str = "boost", alpha: float = 5.0,
                 first_k: int | None = None, prompt_length: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        if ids.numel() == 0 and mode != "none":
            raise ValueError("empty token set")
        if first_k is not None and first_k < 1:
            raise ValueError("first_k must be >= 1")
        self.ids, self.mode, self.alpha, self.first_k = ids, mode, float(alpha), first_k
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.mode == "none":
            return scores
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        if self.first_k is not None and input_ids.shape[1] - self.prompt_length >= self.first_k:
            return scores
        if int(self.ids.max()) >= scores.shape[-1]:
            raise ValueError(f"token id {int(self.ids.max())} is outside the vocabulary of {scores.shape[-1]}")
        ids = self.ids.to(scores.device)
        out = scores.clone()
        if self.mode == "boost":
            out[:, ids] += self.alpha
        else:
            out[:, ids] = max(ABLATE_VALUE, torch.finfo(scores.dtype).min)
        return out


def random_control_set(token_ids: Iterable[int], vocab_size: int, seed: int = 0, size: int | None = None,
                       exclude: Iterable[int] = ()) -> list[int]:
    """A random token set of ``size`` (default ``len(token_ids)``), disjoint from ``token_ids``.

    Drawn uniformly without replacement from ``[0, vocab_size)`` minus the set
    and ``exclude`` (e.g. special tokens), with a CPU ``torch.Generator``
    seeded with ``seed``: the same seed gives the same set. Returned sorted.
    """
    s = set(int(i) for i in token_ids)
    size = len(s) if size is None else int(size)
    banned = s | set(int(i) for i in exclude)
    pool = torch.tensor([i for i in range(vocab_size) if i not in banned], dtype=torch.long)
    if size > pool.numel():
        raise ValueError(f"cannot draw {size} control tokens from {pool.numel()} candidates")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    pick = pool[torch.randperm(pool.numel(), generator=g)[:size]]
    return sorted(pick.tolist())
