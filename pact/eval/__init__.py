"""The evaluation harness (paper §2.2, §4.1): attack success rate, task accuracy, over-refusal, tables and plots.

* :mod:`pact.eval.judges` — ``keyword`` (GCG refusal phrases + :mod:`pact.eval.degenerate`, a coarse proxy),
  ``llama-guard`` (:mod:`pact.eval.llama_guard`, the paper's judge) and pluggable callables, one interface
  (:mod:`pact.eval.judge_base`).
* :mod:`pact.eval.answers` — SST-2 / AG News / GSM8K / BBQ answer rules.
* :mod:`pact.eval.metrics` — ASR, accuracy and over-refusal (percent), with counts and 95 % Wilson intervals.
* :mod:`pact.eval.suites` — harmbench, strongreject, jailbreakbench, sst2, agnews, gsm8k, bbq, overrefusal.
* :mod:`pact.eval.runner` — ``pact eval``: generate (:mod:`pact.eval.generations`, keyed by content and resumable),
  judge (:mod:`pact.eval.verdicts`, also ``pact judge``), score, write ``metrics.json``.
* :mod:`pact.eval.report` — ``pact report``: the RUN directories (:mod:`pact.eval.runs`), the Table 2 layout
  (:mod:`pact.eval.table`, markdown/CSV) and Figures 3, 5, 6, 7 (:mod:`pact.eval.plots`).
* :mod:`pact.eval.intervention_report` — ``pact intervention-report``: Table 1.
"""
from .answers import agnews_matches, gsm8k_extract, is_correct, sst2_prediction
from .judges import (
    DEFAULT_LLAMA_GUARD,
    GCG_REFUSAL_PHRASES,
    CallableJudge,
    Judge,
    KeywordJudge,
    LlamaGuardJudge,
    Verdict,
    get_judge,
    parse_llama_guard,
)
from .metrics import Rate, accuracy, attack_success_rate, wilson_interval
from .suites import SUITES, load_suite, parse_suite_list

__all__ = [
    "DEFAULT_LLAMA_GUARD",
    "GCG_REFUSAL_PHRASES",
    "SUITES",
    "CallableJudge",
    "Judge",
    "KeywordJudge",
    "LlamaGuardJudge",
    "Rate",
    "Verdict",
    "accuracy",
    "agnews_matches",
    "attack_success_rate",
    "get_judge",
    "gsm8k_extract",
    "is_correct",
    "load_suite",
    "parse_llama_guard",
    "parse_suite_list",
    "sst2_prediction",
    "wilson_interval",
]
