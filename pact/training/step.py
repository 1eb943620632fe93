"""One micro-batch's loss, the same for the driver (``pact/train.py``) and ``pact.trl.PACTTrainer``."""
from __future__ import annotations

import contextlib

from ..methods import HeadRows, Method
from ..reference import output_head
from .metrics import StepMetrics


@contextlib.contextmanager
def micro_batch_loss(cfg, engine, method: Method, reference, batch, metrics: StepMetrics):
    """Context giving the method's :class:`~pact.methods.LossResult` on one micro-batch (and adding its
    safety-token confidences to ``metrics``); run the backward inside it.

    ``cfg``: anything with a ``fused_linear`` flag (the driver's ``TrainConfig``,
    ``PACTTrainerConfig``); ``engine``: called as ``engine(ids, mask, rows, mode=...)``
    (a DeepSpeed engine around :class:`~pact.reference.RowModel`, or
    :class:`pact.trl.trainer.RowCaller`).

    ``fused_linear``: the policy forward stops at the hidden rows ``[rows, H]``
    and the method's fused loss applies the output head chunk by chunk; the
    confidences come from the head's K safety rows. Under ZeRO-3 the head's
    weight stays gathered until the context ends, so that with full
    fine-tuning its gradient (made in the forward) reaches the full-size
    parameter, and DeepSpeed, in the backward. Otherwise the forward returns
    ``[rows, V]`` logits.
    """
    if not cfg.fused_linear:
        logits = engine(batch.full_ids, batch.full_mask, batch.full_rows)  # [rows, V]
        metrics.add_confidence(batch, logits)
        ref = method.reference_for(reference, batch) if reference is not None else None
        yield method.loss(batch, logits, ref)
        return
    hidden = engine(batch.full_ids, batch.full_mask, batch.full_rows, mode="policy_hidden")  # [rows, H]
    ref = method.reference_for(reference, batch, fused=True) if reference is not None else None
    with output_head(engine) as head:
        policy = HeadRows(hidden, head)
        result = method.loss(batch, policy, ref)
        metrics.add_confidence_from_head(batch, policy, result.ce_rows)
        yield result
