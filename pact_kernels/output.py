"""The values returned by :func:`pact_kernels.pact_loss` and by a backend's ``forward_with_grad``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass
class PACTLossOutput:
    """Result of one PACT loss evaluation.

    Attributes:
        loss: scalar, ``ce + lambda_kl * kl``; the only differentiable field
            (gradient to ``logits``).
        ce: scalar, mean cross-entropy over the labelled rows (detached).
        kl: scalar, mean KL term over the labelled rows, before λ (detached).
        gate: ``[rows]`` float32, the per-row gate c̃ actually used to mix the
            references (0 for rows with ``ignore_index`` and for the variants
            without calibration; detached).
        num_rows: scalar int64 tensor, the number of labelled rows ``n``.
        ce_rows: ``[rows]`` float32 per-row cross-entropy, 0 on ignored rows
            (detached; None from a backend that does not report rows).
        kl_rows: ``[rows]`` float32 per-row KL term before λ, likewise.
    """

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    gate: torch.Tensor
    num_rows: torch.Tensor
    ce_rows: torch.Tensor | None = None
    kl_rows: torch.Tensor | None = None

    def __iter__(self):
        # `loss, ce, kl, gate, n = pact_loss(...)` works as well as attributes.
        return iter((self.loss, self.ce, self.kl, self.gate, self.num_rows))


class KernelResult(NamedTuple):
    """What a backend's ``forward_with_grad(logits, inputs, cfg)`` returns.

    Attributes:
        loss, ce, kl: scalars in the accumulation dtype (float32; float64 for
            float64 logits), ``loss = ce + λ·kl``, NaN where not finite.
        gate: ``[rows]`` float32 c̃ (0 on unlabelled rows and ungated variants).
        num_rows: int64 scalar, the labelled rows ``n``.
        grad: ``[rows, V]`` ``d loss / d logits`` in
            :func:`pact_kernels.precision.held_gradient_dtype` of the logits'
            dtype (the logits tensor itself with ``inplace_grad``); None from
            the naive backend's :func:`~pact_kernels.backends.naive.loss_terms`.
        ce_rows, kl_rows: ``[rows]`` float32 per-row terms, 0 on unlabelled rows.
    """

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    gate: torch.Tensor
    num_rows: torch.Tensor
    grad: torch.Tensor | None
    ce_rows: torch.Tensor
    kl_rows: torch.Tensor
