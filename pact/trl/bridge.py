"""The pieces of :class:`pact.trl.PACTTrainer` that adapt TRL's model and data to the driver's: the driver's
call signature on a patched model (:class:`RowCaller`), the driver's sample order (:class:`StepOrderSampler`),
the reference's weights by content (:func:`memory_weights_key`), and the driver's step record as flat log keys
(:func:`flat_record`)."""
from __future__ import annotations

import hashlib

import torch

from ..fingerprint import update_with_tensor
from ..model_rows import RowMode
from ..training.data import StepSampler
from ..training.metrics import KINDS, POSITIONS


class RowCaller:
    """Calls a (wrapped) model patched by :func:`pact.model_rows.patch_row_forward` with the driver's signature.

    ``RowCaller(model)(input_ids, attention_mask, rows, mode)`` is what the
    driver's ``engine(input_ids, attention_mask, rows, mode=mode)`` is, so
    :class:`pact.reference.OnlineReference` works on it unchanged.
    """

    def __init__(self, model):
        self.model = model

    @property
    def module(self):
        """The model inside the wrappers (what :func:`pact.model_rows.output_head` reads the head of)."""
        return getattr(self.model, "module", self.model)

    def __call__(self, input_ids, attention_mask, rows, mode=None, labels=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, pact_rows=rows,
                          pact_mode=mode or RowMode.POLICY, pact_labels=labels)


class StepOrderSampler(torch.utils.data.Sampler):
    """The driver's sample order: each epoch's seeded permutation, with its last partial step (fewer
    micro-batches, or a smaller last one; ``dataloader_drop_last=False``, TRL's default) or cut to whole
    steps as the driver does (``keep_last=False``).

    With the ``DataLoader``'s ``batch_size`` = micro-batch and ``accelerate``
    dealing micro-batches to ranks in turn, rank r gets micro-batches
    ``g*world + r`` of each step's block: the driver's
    :meth:`~pact.training.data.StepSampler.micro_batches`.
    """

    def __init__(self, steps: StepSampler, keep_last: bool = True):
        self.steps = steps
        self.keep_last = keep_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps.num_samples if self.keep_last else self.steps.steps_per_epoch * self.steps.block

    def __iter__(self):
        return iter(self.steps.permutation(self.epoch)[:len(self)])


def memory_weights_key(model) -> str:
    """SHA-256 of a reference's weights as they are in memory: ``model``'s, or for a peft model the weights
    its disabled adapter leaves (every parameter and buffer but the adapters'), named as in the plain model
    (peft's ``base_model.model.`` and ``.base_layer`` left out)."""
    model = getattr(model, "module", model)
    adapters = tuple(f".{name}." for name in getattr(model, "peft_config", {}) or {})
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if adapters and any(a in name for a in adapters):
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        update_with_tensor(h, name, _gathered_copy(t))
    return "memory:" + h.hexdigest()


def flat_record(record: dict) -> dict[str, float]:
    """The driver's step record (:meth:`StepMetrics.reduce`) as flat scalar log keys (None values left out)."""
    out = {k: record[k] for k in ("ce", "kl", "gate_mean")}
    for kind in KINDS:
        part = record[kind]
        for key in ("ce", "kl"):
            if part[key] is not None:
                out[f"{kind}/{key}"] = part[key]
        if part["safety_prob"] is not None:
            out[f"{kind}/safety_prob"] = sum(part["safety_prob"]) / POSITIONS
            out.update({f"{kind}/safety_prob_t{t}": p for t, p in enumerate(part["safety_prob"])})
    return out


def _gathered_copy(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy of a parameter or buffer, whole also when ZeRO-3 partitions it."""
    if hasattr(t, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([t]):
            return t.detach().cpu().contiguous()
    return t.detach().cpu().contiguous()
