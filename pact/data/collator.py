"""Batches of :class:`~pact.data.views.TwoViews`: padded ids and the loss rows of both views."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .views import TwoViews


@dataclass
class PACTBatch:
    """One micro-batch of B samples.

    Attributes:
        full_ids: ``[B, L1]`` int64 full-view ids, right-padded.
        full_mask: ``[B, L1]`` int64 attention mask built from lengths.
        post_ids: ``[B, L2]`` int64 no-prompt-view ids, right-padded.
        post_mask: ``[B, L2]`` int64 attention mask.
        full_rows: ``[rows]`` int64 flat indices into ``[B*L1]`` of the
            positions whose next token is an answer token.
        post_rows: ``[rows]`` int64 the same rows in ``[B*L2]``.
        labels: ``[rows]`` int64 the answer token each row predicts.
        answer_pos: ``[rows]`` int64 each row's 0-based index in its answer.
        row_sample: ``[rows]`` int64 the sample (0..B-1) of each row.
        harmful: ``[B]`` bool, harmful samples.
        sample_ids: ``[B]`` int64 dataset indices (for caches and logs).
    """

    full_ids: torch.Tensor
    full_mask: torch.Tensor
    post_ids: torch.Tensor
    post_mask: torch.Tensor
    full_rows: torch.Tensor
    post_rows: torch.Tensor
    labels: torch.Tensor
    answer_pos: torch.Tensor
    row_sample: torch.Tensor
    harmful: torch.Tensor
    sample_ids: torch.Tensor

    def to(self, device) -> "PACTBatch":
        return PACTBatch(**{k: v.to(device) for k, v in vars(self).items()})

    @property
    def row_harmful(self) -> torch.Tensor:
        """``[rows]`` bool: rows of harmful samples."""
        return self.harmful[self.row_sample]


def _pad(seqs, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both ``[len(seqs), W]`` int64 with W the longest sequence: the ids right-padded with
    ``pad_id``, the mask 1 on each sequence's own tokens and 0 on padding."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


class PACTCollator:
    """Pads both views and lists the answer rows in the same order for each.

    Args:
        pad_id: id used for padding (its value never matters: the masks come
            from lengths, so a pad id equal to EOS does not hide a real EOS).
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items) -> PACTBatch:
        """``items``: a list of ``(sample_id, TwoViews)``."""
        sample_ids = [i for i, _ in items]
        views: list[TwoViews] = [v for _, v in items]
        full_ids, full_mask = _pad([v.full_ids for v in views], self.pad_id)
        post_ids, post_mask = _pad([v.post_ids for v in views], self.pad_id)
        full_rows, post_rows, labels, answer_pos, row_sample = [], [], [], [], []
        for b, v in enumerate(views):
            k = torch.arange(v.num_answer)
            # position p predicts token p + 1: the answer starts at prompt_len
            full_rows.append(b * full_ids.shape[1] + v.full_prompt_len - 1 + k)
            post_rows.append(b * post_ids.shape[1] + v.post_prompt_len - 1 + k)
            labels.append(torch.tensor(v.full_ids[v.full_prompt_len:], dtype=torch.long))
            answer_pos.append(k)
            row_sample.append(torch.full((v.num_answer,), b, dtype=torch.long))
        return PACTBatch(
            full_ids=full_ids, full_mask=full_mask, post_ids=post_ids, post_mask=post_mask,
            full_rows=torch.cat(full_rows), post_rows=torch.cat(post_rows), labels=torch.cat(labels),
            answer_pos=torch.cat(answer_pos), row_sample=torch.cat(row_sample),
            harmful=torch.tensor([v.harmful for v in views], dtype=torch.bool),
            sample_ids=torch.tensor(sample_ids, dtype=torch.long),
        )

