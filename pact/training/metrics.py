"""Per-step training metrics, reduced over micro-batches and ranks, and their JSONL/TensorBoard log.

One JSONL line per optimizer step (``train_log.jsonl``):
``{"step", "epoch", "loss", "ce", "kl", "gate_mean", "lr", "seconds", "cpu_seconds",
  "benign": {"ce", "kl", "rows", "safety_prob", "safety_logit"},
  "harmful": {...}}``; ``safety_prob``/``safety_logit`` are the mean over the K
safety tokens of the probability / logit at answer positions 0..3 (the
material of the paper's Figures 3, 6 and 7), null where a step had no such row.
``lr`` is the learning rate the step ran at (as the HF Trainer's
``learning_rate``). ``loss`` is the step's loss as it was optimised (``loss_normalization``: the mean
over the step's labelled rows, or the mean of the micro-batch means). A method with a penalty (AsFT)
adds ``"penalty"``, its mean per micro-batch; ``gate_mean`` is the mean per-row weight (PACT's gate,
constrained SFT's w_t).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from ..eval.io import read_jsonl
from ..atomic_files import write_text_atomic
from .config import ConfigError

POSITIONS = 4
KINDS = ("benign", "harmful")
# Per kind: ce_sum, kl_sum, rows, then per position: prob_sum, logit_sum, count.
_PER_KIND = 3 + 3 * POSITIONS


@functools.lru_cache(maxsize=None)
def _confidence_offsets(device: torch.device) -> torch.Tensor:
    """``[2·POSITIONS·3]`` int64 on ``device`` (made once per device): where (kind, position, prob/logit/count)
    land in :attr:`StepMetrics.sums`."""
    offsets = [4 + k * _PER_KIND + 3 + 3 * t + j for k in range(2) for t in range(POSITIONS) for j in range(3)]
    return torch.tensor(offsets, device=device)


class StepMetrics:
    """Sums of one optimizer step; :meth:`reduce` all-reduces them over ranks.

    Nothing here waits for the device before the backward: the sums stay
    tensors until :meth:`reduce`.

    Args:
        safety_ids: ``[K]`` int64 ids whose confidence is tracked (None: skip); pass them on ``device``
            (placed once per run), else they are copied there.
        device: where the sums live (the collective's device).
        normalization: the run's ``loss_normalization`` (``tokens`` or ``micro_batch``): which mean the
            logged ``loss`` is.
    """

    def __init__(self, safety_ids: torch.Tensor | None, device, normalization: str = "tokens"):
        self.safety_ids = None if safety_ids is None else safety_ids.to(device)
        self.device = device
        self.normalization = normalization
        # loss_sum, micro_batches, gate_sum, rows, then the per-kind block
        # ... then the sum of loss x rows, and last the sum of the methods' penalties (AsFT's regulariser)
        self.sums = torch.zeros(4 + 2 * _PER_KIND + 2, dtype=torch.float64, device=device)
        self.penalized = False

    def _ids_on(self, device) -> torch.Tensor:
        """The safety ids on ``device`` (where they already are when the caller placed them: no copy)."""
        if self.safety_ids.device != device:
            self.safety_ids = self.safety_ids.to(device)
        return self.safety_ids

    @torch.no_grad()
    def add_confidence(self, batch, logits: torch.Tensor) -> None:
        """Safety-token confidence at answer positions 0..3 from the policy logits ``[rows, V]``.

        Call it before the loss: the fused loss writes its gradient into the logits.
        """
        if self.safety_ids is None:
            return
        early = batch.answer_pos < POSITIONS
        z = logits.detach()[early].float()
        self._add_confidence(batch, early, z[:, self._ids_on(z.device)], torch.logsumexp(z, dim=-1))

    @torch.no_grad()
    def add_confidence_from_head(self, batch, policy, ce_rows: torch.Tensor) -> None:
        """The same confidences from the K rows of the output head, no ``[rows, V]`` logits.

        Args:
            policy: :class:`~pact.methods.base.HeadRows` (hidden ``[rows, H]``, the head gathered).
            ce_rows: ``[rows]`` float32 per-row cross-entropy of the step's loss: with the
                label's logit ``z_y`` it gives the log-normaliser ``lse = CE + z_y``.
        """
        if self.safety_ids is None:
            return
        early = batch.answer_pos < POSITIONS
        head, h = policy.head, policy.hidden.detach()[early].float()
        ids = self._ids_on(h.device)
        labels = batch.labels[early].to(h.device)
        z_s = h @ head.weight.detach()[ids].float().T
        z_y = (h * head.weight.detach()[labels].float()).sum(dim=-1)
        if head.bias is not None:
            z_s, z_y = z_s + head.bias.detach()[ids].float(), z_y + head.bias.detach()[labels].float()
        if head.softcap:
            z_s, z_y = (head.softcap * torch.tanh(t / head.softcap) for t in (z_s, z_y))
        self._add_confidence(batch, early, z_s, ce_rows[early].to(h.device).float() + z_y)

    def _add_confidence(self, batch, early: torch.Tensor, z_s: torch.Tensor, lse: torch.Tensor) -> None:
        """Sums of mean probability / logit over S per kind and position, for the rows ``early``
        (``[rows]`` bool, answer positions < 4): ``z_s`` ``[early rows, K]`` float32 logits on S,
        ``lse`` ``[early rows]`` float32 log-sum-exp over V of each of their logit rows."""
        probs = torch.exp(z_s - lse[:, None])
        slot = batch.row_harmful[early].long() * POSITIONS + batch.answer_pos[early].long()  # kind·4 + position
        per_row = torch.stack([probs.mean(dim=-1).double(), z_s.mean(dim=-1).double(),
                               torch.ones_like(lse, dtype=torch.float64)], dim=1)  # [early rows, 3]
        by_slot = torch.zeros(2 * POSITIONS, 3, dtype=torch.float64, device=per_row.device).index_add_(0, slot, per_row)
        self.sums.index_add_(0, _confidence_offsets(self.sums.device), by_slot.flatten().to(self.sums.device))

    @torch.no_grad()
    def add_loss(self, loss: torch.Tensor, result, batch) -> None:
        """One micro-batch's loss and the method's per-row CE, KL and weight (``row_weight``: PACT's gate)."""
        s = self.sums
        s[0] += loss.detach().double()
        s[1] += 1
        s[2] += result.row_weight.double().sum()
        s[3] += batch.labels.numel()
        s[-2] += loss.detach().double() * batch.labels.numel()
        if result.penalty is not None:
            s[-1] += result.penalty.double()
            self.penalized = True
        for k, kind_mask in enumerate((~batch.row_harmful, batch.row_harmful)):
            base = 4 + k * _PER_KIND
            s[base] += result.ce_rows[kind_mask].double().sum()
            s[base + 1] += result.kl_rows[kind_mask].double().sum()
            s[base + 2] += kind_mask.sum()

    def reduce(self) -> dict:
        """All-reduce (sum) over ranks and turn the sums into the log record (without step/lr)."""
        s = self.sums.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(s)
        s = s.tolist()
        loss = s[-2] / max(s[3], 1) if self.normalization == "tokens" else s[0] / max(s[1], 1)
        rec = {"loss": loss, "gate_mean": s[2] / max(s[3], 1)}
        total_rows = 0.0
        ce_total = kl_total = 0.0
        for k, kind in enumerate(KINDS):
            base = 4 + k * _PER_KIND
            rows = s[base + 2]
            total_rows += rows
            ce_total += s[base]
            kl_total += s[base + 1]
            counts = [s[base + 3 + 3 * t + 2] for t in range(POSITIONS)]
            tracked = self.safety_ids is not None and all(c > 0 for c in counts)
            rec[kind] = {
                "ce": s[base] / rows if rows else None,
                "kl": s[base + 1] / rows if rows else None,
                "rows": int(rows),
                "safety_prob": [s[base + 3 + 3 * t] / counts[t] for t in range(POSITIONS)] if tracked else None,
                "safety_logit": [s[base + 4 + 3 * t] / counts[t] for t in range(POSITIONS)] if tracked else None,
            }
        # row-weighted means over the step
        rec["ce"] = ce_total / max(total_rows, 1)
        rec["kl"] = kl_total / max(total_rows, 1)
        if self.penalized:  # mean over micro-batches and ranks
            rec["penalty"] = s[-1] / max(s[1], 1)
        return rec


class TrainLogger:
    """Appends step records to ``train_log.jsonl`` (and TensorBoard when installed); rank 0 only.

    On resume the log is cut back to the steps before the checkpoint, so it
    never holds a step twice; a last line torn by a crash is dropped.
    """

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(run_dir) / "train_log.jsonl"
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # a last line torn by a crash mid-write is dropped; any other bad line is an error
            kept = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{self.path} is damaged ({e}); move it away to resume without the old log") from None
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except Exception:  # tensorboard not installed
            self.tb = None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["step"]
            for key in ("loss", "ce", "kl", "gate_mean", "lr"):
                self.tb.add_scalar(f"train/{key}", record[key], step)
            for kind in KINDS:
                for key in ("ce", "kl"):
                    if record[kind][key] is not None:
                        self.tb.add_scalar(f"{kind}/{key}", record[kind][key], step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
