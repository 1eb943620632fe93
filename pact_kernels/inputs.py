"""The targets and references of one PACT loss evaluation, as one value.

Every backend and both autograd Functions take a :class:`PACTInputs` next to
the logits (or the hidden rows) and a :class:`pact_kernels.config.PACTConfig`;
it checks itself against the logits (:meth:`PACTInputs.check`) and slices
itself into row chunks (:meth:`PACTInputs.rows`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .checks import (check_float_matrix, check_index_vector, check_weight_vector, labels_outside_vocabulary,
                     require_float_dtype, require_rows_matrix, require_tensor)
from .config import PACTConfig


@dataclass(frozen=True, eq=False)
class PACTInputs:
    """Everything :func:`pact_kernels.pact_loss` reads besides the logits.

    Attributes:
        labels: ``[rows]`` integer next-token targets; ``ignore_index`` on rows
            that count for nothing.
        ref_full: ``[rows, K]`` (on ``safety_ids``, in their order) or ``[rows, V]``
            frozen reference logits on the full context (``[rows, V]`` for
            ``full_vocab``); None only inside the fused head while its chunks
            make it from the reference's hidden rows.
        ref_post: like ``ref_full``, on the no-prompt view (gated variants only; may be None).
        safety_ids: ``[K]`` integer ids of S, distinct, in ``[0, V)``.
        safety_weights: ``[K]`` float weights w(v) ≥ 0, at least one > 0.
        answer_pos: ``[rows]`` integer 0-based answer positions (``pact`` only; may be None).
    """

    labels: torch.Tensor
    ref_full: torch.Tensor | None
    ref_post: torch.Tensor | None
    safety_ids: torch.Tensor
    safety_weights: torch.Tensor
    answer_pos: torch.Tensor | None = None

    def rows(self, block: slice, **replace) -> "PACTInputs":
        """The rows ``block`` of every per-row tensor (views); S is shared. ``replace``: fields to set instead."""
        per_row = {name: None if t is None else t[block]
                   for name, t in (("labels", self.labels), ("ref_full", self.ref_full),
                                   ("ref_post", self.ref_post), ("answer_pos", self.answer_pos))}
        return dataclasses.replace(self, **{**per_row, **replace})

    def labelled(self, ignore_index: int) -> torch.Tensor:
        """``[rows]`` bool: the rows that count."""
        return self.labels != ignore_index

    def kl_weights(self, cfg: PACTConfig, dtype: torch.dtype) -> torch.Tensor:
        """``[K]`` weights of the KL in ``dtype``: ones for ``safety_tokens`` (and ``full_vocab``), else w."""
        if cfg.variant in ("safety_tokens", "full_vocab"):
            return torch.ones(self.safety_ids.shape, dtype=dtype, device=self.safety_ids.device)
        return self.safety_weights.detach().to(dtype)

    def check(self, logits: torch.Tensor, cfg: PACTConfig) -> None:
        """Raise TypeError / ValueError for anything :func:`pact_kernels.pact_loss` cannot use with ``logits``.

        Shapes: ``logits [rows, V]``, ``labels [rows]``, references ``[rows, K]``
        or ``[rows, V]``, ``safety_ids [K]``, ``safety_weights [K]``, ``answer_pos [rows]``.
        The value checks read small tensors on their device and come back to the
        host together: on CUDA one synchronisation per call, the only one in ``pact_kernels``.
        """
        check_logits(logits)
        rows, vocab = logits.shape
        check_index_vector("labels", self.labels, rows, logits.device)
        self._check_safety_set(vocab, logits.device)
        self._check_references(rows, vocab, logits.device, cfg)
        if self.answer_pos is not None:
            check_index_vector("answer_pos", self.answer_pos, rows, logits.device)
        self._check_values(vocab, cfg.ignore_index)

    def _check_safety_set(self, vocab: int, device: torch.device) -> None:
        check_index_vector("safety_ids", self.safety_ids, -1, device)
        k = self.safety_ids.shape[0]
        if k == 0:
            raise ValueError("safety_ids is empty; pass at least one safety token id")
        if k > vocab:
            raise ValueError(f"safety_ids has {k} entries but the vocabulary has only {vocab} tokens")
        check_weight_vector("safety_weights", self.safety_weights, k, device)

    def _check_references(self, rows: int, vocab: int, device: torch.device, cfg: PACTConfig) -> None:
        k = self.safety_ids.shape[0]
        if cfg.variant == "full_vocab":
            if self.ref_full is None:
                raise ValueError("variant='full_vocab' needs ref_full, the reference logits over the whole vocabulary")
            check_float_matrix("ref_full", self.ref_full, rows, (vocab,), device)
        else:
            if self.ref_full is None:
                raise ValueError("ref_full is None; pass the frozen reference's logits on the full context")
            check_float_matrix("ref_full", self.ref_full, rows, (k, vocab), device)
        if cfg.uses_gate:
            if self.ref_post is None:
                raise ValueError(
                    f"variant={cfg.variant!r} needs ref_post, the reference's logits on the no-prompt view; "
                    "pass it, or use variant='safety_weights' for a reference without calibration"
                )
            check_float_matrix("ref_post", self.ref_post, rows, (k, vocab), device)
        if cfg.uses_decay and self.answer_pos is None:
            raise ValueError(
                "variant='pact' needs answer_pos, each row's 0-based index within its answer; "
                "pass it, or use variant='response_only_ref' for a gate without position decay"
            )

    def _check_values(self, vocab: int, ignore_index: int) -> None:
        """The value checks, on the device, gathered into one host transfer."""
        ids, w = self.safety_ids.long(), self.safety_weights.float()
        labelled = self.labelled(ignore_index)
        no_flag = labelled.new_zeros(())
        flags = torch.stack([
            ((ids < 0) | (ids >= vocab)).any(),
            (ids.sort().values.diff() == 0).any(),
            (~torch.isfinite(w)).any(),
            (w < 0).any(),
            ~(w > 0).any(),
            (labelled & ((self.labels < 0) | (self.labels >= vocab))).any(),
            (labelled & (self.answer_pos < 0)).any() if self.answer_pos is not None else no_flag,
        ]).tolist()
        for flag, message in zip(flags, _value_errors(vocab, ignore_index)):
            if flag:
                raise ValueError(message)


def _value_errors(vocab: int, ignore_index: int) -> tuple:
    """The messages of :meth:`PACTInputs._check_values`' flags, in their order."""
    return (
        f"safety_ids has ids outside [0, {vocab}); ids must index the logits' vocabulary",
        "safety_ids has duplicate ids; each safety token must appear once",
        "safety_weights has NaN or infinite entries; weights must be finite and >= 0",
        "safety_weights has negative entries; weights must be >= 0 (clip them with .clamp_min(0))",
        "safety_weights has no positive entry; at least one safety token must weigh more than 0",
        labels_outside_vocabulary(vocab, ignore_index),
        "answer_pos is negative on a labelled row; it must be the 0-based index within the answer",
    )


def check_logits(logits) -> None:
    """``logits`` is a float ``[rows, V]`` tensor."""
    require_tensor("logits", logits)
    require_float_dtype("logits", logits)
    require_rows_matrix("logits", logits)


def on_safety_set(ref: torch.Tensor, safety_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Reference logits on S: ``ref`` itself when ``[rows, K]``, else ``ref[:, safety_ids]``.

    A ``[rows, V]`` input is recognised by its width; when K == V the columns
    are taken to be in vocabulary order and gathered.
    """
    if ref.shape[1] == vocab_size:
        return ref[:, safety_ids]
    return ref
