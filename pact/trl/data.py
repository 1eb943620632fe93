"""TRL's dataset formats as PACT samples, their two views as a ``datasets.Dataset``, and the collator over it.

Formats (TRL's names):

- conversational language modeling: ``messages`` (the answer is the last
  message, which must be the assistant's; the turns before it are the prompt);
- standard prompt-completion: ``prompt`` and ``completion`` strings (the
  prompt becomes the user turn of the chat template);
- conversational prompt-completion: ``prompt`` a list of messages and
  ``completion`` a list holding one assistant message.

An optional boolean ``harmful`` column marks attack samples (the logged
safety-token probabilities are split by it). The views come from
:class:`pact.data.views.ViewBuilder` and are batched by
:class:`pact.data.collator.PACTCollator`, the driver's own pieces.
"""
from __future__ import annotations

import warnings

from dataclasses import dataclass
from typing import Any

from ..data.collator import PACTCollator
from ..data.tasks import Sample
from ..data.views import TwoViews, ViewBuilder

#: Columns of a prepared dataset (what the collator reads).
VIEW_COLUMNS = ["full_ids", "post_ids", "num_answer", "harmful", "index"]


def _content(message: dict) -> str:
    content = message.get("content")
    if not isinstance(content, str):
        raise ValueError(f"message content must be a string, got {type(content).__name__}: {message!r}")
    return content


def to_sample(row: dict[str, Any], where: str) -> Sample:
    """One dataset row as a :class:`~pact.data.tasks.Sample` (prompt: a string or a list of messages)."""
    harmful = bool(row.get("harmful") or False)
    if "messages" in row and row["messages"] is not None:
        messages = list(row["messages"])
        if len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise ValueError(f"{where}: the last message of 'messages' must be the assistant's answer (the "
                             "completion PACT trains on); this row has none")
        return Sample(prompt=messages[:-1], response=_content(messages[-1]), harmful=harmful)
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(completion, list):  # conversational prompt-completion
            if len(completion) != 1 or completion[0].get("role") != "assistant":
                raise ValueError(f"{where}: 'completion' must hold exactly one assistant message")
            completion = _content(completion[0])
        if not isinstance(completion, str) or not completion:
            raise ValueError(f"{where}: empty 'completion'; PACT trains on the completion")
        if isinstance(prompt, list):
            prompt = [dict(m) for m in prompt]
        return Sample(prompt=prompt, response=completion, harmful=harmful)
    raise ValueError(f"{where}: no completion: PACTTrainer takes TRL's 'messages' (ending with the assistant's "
                     "answer), 'prompt'/'completion' or conversational prompt/completion columns; found "
                     f"{sorted(row)}")


def build_views(dataset, builder: ViewBuilder, name: str) -> tuple[list[TwoViews], int]:
    """Both views of every row of a ``datasets.Dataset`` (rows that leave no room for an answer are dropped)."""
    columns = set(dataset.column_names)
    if not ({"messages"} <= columns or {"prompt", "completion"} <= columns):
        raise ValueError(f"the {name} dataset has no completion: PACTTrainer takes TRL's 'messages', "
                         f"'prompt'/'completion' or conversational prompt/completion columns; it has "
                         f"{sorted(columns)}")
    samples = [to_sample(row, f"{name} dataset row {i}") for i, row in enumerate(dataset)]
    built = [builder.build(s.prompt, s.response, harmful=s.harmful) for s in samples]
    views = [v for v in built if v is not None]
    dropped = len(built) - len(views)
    if not views:
        raise ValueError(f"every row of the {name} dataset has a prompt that fills max_length="
                         f"{builder.max_length}: nothing to train on; raise max_length")
    if dropped:  # said, never silent: a user's dataset has no mixture to redraw from
        warnings.warn(f"the {name} dataset: {dropped} of {len(built)} rows have a prompt that fills max_length="
                      f"{builder.max_length} and are dropped (trainer.dropped[{name!r}]); raise max_length to "
                      "keep them", stacklevel=2)
    cut = [v for v in views if v.cut_tokens]
    if cut:  # counted and said: a cut answer has lost its end-of-turn token
        warnings.warn(f"the {name} dataset: {len(cut)} of {len(views)} answers are cut to fit max_length="
                      f"{builder.max_length} and lose their end-of-turn token ({sum(v.cut_tokens for v in cut)} "
                      "answer tokens cut); raise max_length to keep them whole", stacklevel=2)
    return views, dropped


def views_dataset(views: list[TwoViews]):
    """The views as a ``datasets.Dataset`` with :data:`VIEW_COLUMNS` (``index``: the position in ``views``)."""
    from datasets import Dataset

    return Dataset.from_dict({
        "full_ids": [list(v.full_ids) for v in views], "post_ids": [list(v.post_ids) for v in views],
        "num_answer": [v.num_answer for v in views], "harmful": [v.harmful for v in views],
        "index": list(range(len(views))),
    })


@dataclass
class ViewCollator:
    """Rows of :func:`views_dataset` -> the tensors of a :class:`~pact.data.collator.PACTBatch` (a dict).

    ``pad_id`` is set by the trainer once it knows the tokenizer.
    """

    pad_id: int = 0

    def __call__(self, rows: list[dict]) -> dict:
        items = [(r["index"], TwoViews(tuple(r["full_ids"]), tuple(r["post_ids"]), int(r["num_answer"]),
                                       bool(r["harmful"]))) for r in rows]
        return vars(PACTCollator(self.pad_id)(items))
