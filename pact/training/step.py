"""One micro-batch's loss, the same for the driver (``pact/train.py``) and ``pact.trl.PACTTrainer``."""
from __future__ import annotations

import contextlib

import torch

from ..methods import HeadRows, Method
from ..model_rows import RowMode, output_head
from .metrics import StepMetrics


@contextlib.contextmanager
def micro_batch_loss(cfg, engine, method: Method, reference, batch, metrics: StepMetrics, on_policy=None):
    """Context giving the method's :class:`~pact.methods.LossResult` on one micro-batch (and adding its
    safety-token confidences to ``metrics``); run the backward inside it.

    ``cfg``: anything with a ``fused_linear`` flag (the driver's ``TrainConfig``,
    ``PACTTrainerConfig``); ``engine``: called as ``engine(ids, mask, rows, mode=...)``
    (a DeepSpeed engine around :class:`~pact.model_rows.RowModel`, or
    :class:`pact.trl.bridge.RowCaller`).

    ``fused_linear``: the policy forward stops at the hidden rows ``[rows, H]``
    and the method's fused loss applies the output head chunk by chunk; the
    confidences come from the head's K safety rows. Under ZeRO-3 the head's
    weight stays gathered until the context ends, so that with full
    fine-tuning its gradient (made in the forward) reaches the full-size
    parameter, and DeepSpeed, in the backward. Otherwise the forward returns
    ``[rows, V]`` logits.

    ``on_policy(batch, policy)``, when given, sees the policy (``[rows, V]`` logits
    before the loss writes its gradient into them, or :class:`~pact.methods.HeadRows`
    with the head gathered), e.g. for :func:`token_statistics`.
    """
    if not cfg.fused_linear:
        logits = engine(batch.full_ids, batch.full_mask, batch.full_rows)  # [rows, V]
        metrics.add_confidence(batch, logits)
        if on_policy is not None:
            on_policy(batch, logits)
        ref = method.reference_for(reference, batch) if reference is not None else None
        yield method.loss(batch, logits, ref)
        return
    hidden = engine(batch.full_ids, batch.full_mask, batch.full_rows, mode=RowMode.POLICY_HIDDEN)  # [rows, H]
    ref = method.reference_for(reference, batch, fused=True) if reference is not None else None
    with output_head(engine) as head:
        policy = HeadRows(hidden, head)
        result = method.loss(batch, policy, ref)
        metrics.add_confidence_from_head(batch, policy, result.ce_rows)
        if on_policy is not None:
            on_policy(batch, policy)
        yield result


def step_loss_weight(normalization: str, rows: int, step_rows: int, accumulation: int) -> float:
    """The factor of one micro-batch's mean loss in its step's loss.

    Args:
        normalization: ``"tokens"``: the step's loss is the mean over the labelled
            rows of all its micro-batches, on every rank, as one bigger batch
            (``Σ_rows ℓ_row / step_rows``; TRL's ``num_items_in_batch``), so the
            factor is ``rows / step_rows``. ``"micro_batch"``: the mean of the
            micro-batch means, ``1 / (accumulation · ranks)``; here
            ``1 / accumulation`` (the ranks' average is the data-parallel one).
        rows: labelled rows of this micro-batch; step_rows: of the whole step, all
            ranks together; accumulation: micro-batches per rank and step.

    Every term of a method's loss is a mean over the micro-batch's rows (SPEC §3:
    CE, λ·KL with each row's gate inside it), so with ``"tokens"`` each row
    weighs ``1 / step_rows`` in CE and KL alike, wherever it sits. A
    per-micro-batch term (AsFT's penalty) gets the same factors, which add up to
    one per step in both modes.
    """
    if normalization == "micro_batch":
        return 1.0 / accumulation
    return rows / step_rows if step_rows else 0.0


def backward_scale(normalization: str, rows: int, step_rows: int, accumulation: int, world: int) -> float:
    """Factor on a micro-batch's mean loss before DeepSpeed's ``engine.backward``, which divides by the
    accumulation steps and averages the gradients over the ``world`` ranks: the step then gets the gradient
    of ``Σ step_loss_weight · loss`` over all micro-batches and ranks."""
    weight = step_loss_weight(normalization, rows, step_rows, accumulation)
    return weight * accumulation * (world if normalization == "tokens" else 1)


@torch.no_grad()
def token_statistics(policy, labels: torch.Tensor, chunk_elements: int = 2**24) -> torch.Tensor:
    """``[3]`` float64 on the policy's device: the sum over rows of the entropy (nats) of the policy's
    next-token distribution over the whole vocabulary, the rows whose top-1 token is the label, and the rows
    (what ``SFTTrainer`` logs as ``entropy`` and ``mean_token_accuracy``, over the completion tokens).

    Args:
        policy: ``[rows, V]`` logits, or :class:`~pact.methods.HeadRows` (hidden ``[rows, H]`` and the head;
            the logits are made chunk by chunk, ``chunk_elements`` of them at a time, in the head's dtype and
            then float32).
        labels: ``[rows]`` int64.
    """
    if isinstance(policy, HeadRows):
        weight, bias, softcap = policy.head.weight.detach(), policy.head.bias, policy.head.softcap
        source, vocab = policy.hidden.detach(), weight.shape[0]
    else:
        source, vocab = policy.detach(), policy.shape[-1]
    out = torch.zeros(3, dtype=torch.float64, device=source.device)
    step = max(1, chunk_elements // max(vocab, 1))
    for start in range(0, source.shape[0], step):
        z = source[start:start + step]
        if isinstance(policy, HeadRows):
            z = z.to(weight.dtype) @ weight.T
            z = z.float() + (bias.detach().float() if bias is not None else 0.0)
            if softcap:
                z = softcap * torch.tanh(z / softcap)
        z = z.float()
        logp = torch.log_softmax(z, dim=-1)
        out[0] += (-(logp.exp() * logp).sum(dim=-1)).double().sum()
        out[1] += (z.argmax(dim=-1) == labels[start:start + step].to(z.device)).sum()
    out[2] += source.shape[0]
    return out
