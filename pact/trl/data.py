"""TRL's dataset formats as PACT samples, their two views as a ``datasets.Dataset``, and the collator over it.

Formats (TRL's names):

- conversational language modeling: ``messages`` (the last message must be
  the assistant's; each assistant message is an answer, the messages before
  it its prompt);
- standard prompt-completion: ``prompt`` and ``completion`` strings (the
  prompt becomes the user turn of the chat template, with a warning: TRL
  joins them raw);
- conversational prompt-completion: ``prompt`` a list of messages and
  ``completion`` a list holding one assistant message.

An optional ``harmful`` column (booleans, 0/1 or "true"/"false") marks attack samples (the logged
safety-token probabilities are split by it). The views come from
:class:`pact.data.views.ViewBuilder` and are batched by
:class:`pact.data.collator.PACTCollator`, the driver's own pieces.
"""
from __future__ import annotations

import warnings

from dataclasses import dataclass
from typing import Any

from ..data.collator import PACTCollator
from ..data.sources import PromptSourceError
from ..data.tasks import Sample
from ..data.values import parse_bool
from ..data.views import TwoViews, ViewBuilder

#: Columns of a prepared dataset (what the collator reads).
VIEW_COLUMNS = ["full_ids", "post_ids", "num_answer", "harmful", "index"]


def _content(message: dict) -> str:
    content = message.get("content")
    if not isinstance(content, str):
        raise ValueError(f"message content must be a string, got {type(content).__name__}: {message!r}")
    return content


def _harmful(row: dict[str, Any], where: str) -> bool:
    """The row's ``harmful`` value: booleans, 0/1 or "true"/"false" (:func:`pact.data.values.parse_bool`);
    absent or None: False."""
    value = row.get("harmful")
    if value is None:
        return False
    try:
        return parse_bool(value, f"{where}, column 'harmful'")
    except PromptSourceError as e:
        raise ValueError(str(e)) from None


def to_samples(row: dict[str, Any], where: str) -> list[Sample]:
    """One dataset row as :class:`~pact.data.tasks.Sample` s (prompt: a string or a list of messages).

    ``messages``: one sample per assistant turn, its prompt every message before it, so each assistant
    answer is trained once (the tokens ``SFTTrainer`` trains with ``assistant_only_loss=True``).
    """
    harmful = _harmful(row, where)
    if "messages" in row and row["messages"] is not None:
        messages = [dict(m) for m in row["messages"]]
        if len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise ValueError(f"{where}: the last message of 'messages' must be the assistant's answer (the "
                             "completion PACT trains on); this row has none")
        return [Sample(prompt=messages[:i], response=_content(m), harmful=harmful)
                for i, m in enumerate(messages) if m.get("role") == "assistant" and i > 0]
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
        return [Sample(prompt=prompt, response=completion, harmful=harmful)]
    raise ValueError(f"{where}: no completion: PACTTrainer takes TRL's 'messages' (ending with the assistant's "
                     "answer), 'prompt'/'completion' or conversational prompt/completion columns; found "
                     f"{sorted(row)}")


def format_warnings(dataset, name: str, assistant_only_loss: bool) -> list[str]:
    """Where PACTTrainer trains other tokens than ``SFTTrainer`` on this dataset, and why (warned once each)."""
    columns = set(dataset.column_names)
    out = []
    if "messages" in columns and not assistant_only_loss:
        out.append(f"the {name} dataset is in TRL's 'messages' format: SFTTrainer trains every token of it unless "
                   "assistant_only_loss=True; PACTTrainer trains each assistant answer (the tokens SFTTrainer "
                   "trains with assistant_only_loss=True), since PACT's loss compares answers with the reference. "
                   "Set assistant_only_loss=True to silence this")
    elif {"prompt", "completion"} <= columns and len(dataset) and isinstance(dataset[0]["prompt"], str):
        out.append(f"the {name} dataset's prompt/completion are plain strings: SFTTrainer joins them as raw text; "
                   "PACTTrainer renders each prompt as a user turn and its completion as the assistant's answer "
                   "with the chat template (PACT's no-prompt view is the template's assistant header + the answer, "
                   "and the aligned model's safety is conditioned on its template), so it trains the completion "
                   "plus the end-of-turn token. Pass conversational prompt/completion (lists of messages) to "
                   "silence this")
    return out


def build_views(dataset, builder: ViewBuilder, name: str) -> tuple[list[TwoViews], int]:
    """Both views of every sample of a ``datasets.Dataset`` (samples that leave no room for an answer are
    dropped)."""
    columns = set(dataset.column_names)
    if not ({"messages"} <= columns or {"prompt", "completion"} <= columns):
        raise ValueError(f"the {name} dataset has no completion: PACTTrainer takes TRL's 'messages', "
                         f"'prompt'/'completion' or conversational prompt/completion columns; it has "
                         f"{sorted(columns)}")
    samples = [s for i, row in enumerate(dataset) for s in to_samples(row, f"{name} dataset row {i}")]
    built = [builder.build(s.prompt, s.response, harmful=s.harmful) for s in samples]
    views = [v for v in built if v is not None]
    dropped = len(built) - len(views)
    if not views:
        raise ValueError(f"every row of the {name} dataset has a prompt that fills max_length="
                         f"{builder.max_length}: nothing to train on; raise max_length")
    if dropped:  # said, never silent: a user's dataset has no mixture to redraw from
        warnings.warn(f"the {name} dataset: {dropped} of {len(built)} answers have a prompt that fills max_length="
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


def completion_tail_warning(dataset, tokenizer, name: str) -> str | None:
    """For conversational prompt/completion: the text ``SFTTrainer`` trains after the answer's end-of-turn marker
    (the template's trailing whitespace, e.g. ``"\\n"``), which PACT's answer leaves out (both views end at the
    marker, :meth:`pact.data.views.ViewBuilder.build`), as a warning; None when there is none."""
    columns = set(dataset.column_names)
    if not ({"prompt", "completion"} <= columns and len(dataset) and isinstance(dataset[0]["prompt"], list)):
        return None
    row = dataset[0]
    prompt, completion = [dict(m) for m in row["prompt"]], [dict(m) for m in row["completion"]]
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not full_text.startswith(prompt_text):
        return None
    answer = full_text[len(prompt_text):]
    tail = answer[len(answer.rstrip()):]
    if not tail:
        return None
    return (f"the {name} dataset: SFTTrainer also trains the {tail!r} the chat template puts after each answer's "
            "end-of-turn marker; PACTTrainer's answer ends at the marker (generation stops there, and both views "
            "share exactly the answer tokens), so it does not train them")
