"""Reading task answers: SST-2, AG News and GSM8K, as in the authors' evaluation recipe, and BBQ (the demo's task).

SST-2 (:func:`sst2_prediction`)
    Correct only on an exact answer: after stripping surrounding whitespace
    the answer is ``positive`` or ``Positive`` (label positive), ``negative``
    or ``Negative`` (label negative). ``POSITIVE``, ``positive.`` or
    "The sentiment is positive" count as wrong: this is the authors' rule
    (it measures whether the fine-tuned model learned the answer format too).

AG News (:func:`agnews_matches`)
    Correct when the gold label's words occur in the answer as whole words,
    case-insensitively (regex ``\\b...\\b``):

    ======== ===========================================
    label    words that count
    ======== ===========================================
    World    world
    Sports   sports
    Business business
    Sci/Tech sci/tech, sci, technology, tech
    ======== ===========================================

    The rule is lenient by design (the authors'): an answer naming several
    categories is correct for each of them. :func:`agnews_prediction` gives
    the category named first, for display.

GSM8K (:func:`gsm8k_extract`)
    The number after the last "The final answer is:" (the training format;
    case-insensitive, colon optional); else the number after the last
    ``####`` (the data set's own convention); else the last number in the
    answer. Numbers may carry a sign, thousands commas (``1,000``), decimals
    and surrounding units or currency (``$18.50``, ``18 dollars``); they are
    compared as floats (:func:`gsm8k_correct`).

BBQ (:func:`bbq_prediction`)
    Correct only on an exact answer, in the spirit of the SST-2 rule: after
    stripping surrounding whitespace the answer is the gold option's letter
    alone (``A``, ``B`` or ``C``, upper case). ``A)``, ``(A)``, ``a``,
    ``A) The teacher`` or "The answer is A" count as wrong: like SST-2 it
    measures whether the model learned the answer format too.
"""
from __future__ import annotations

import math
import re

__all__ = [
    "AGNEWS_PATTERNS",
    "agnews_matches",
    "agnews_prediction",
    "bbq_prediction",
    "gsm8k_correct",
    "gsm8k_extract",
    "is_correct",
    "parse_number",
    "prediction",
    "sst2_prediction",
]

BBQ_LETTERS = ("A", "B", "C")
SST2_EXACT = {"positive": "positive", "Positive": "positive", "negative": "negative", "Negative": "negative"}

AGNEWS_PATTERNS: dict[str, tuple[str, ...]] = {
    "World": ("world",),
    "Sports": ("sports",),
    "Business": ("business",),
    "Sci/Tech": ("sci/tech", "sci", "technology", "tech"),
}
_AG_RE = {label: re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
          for label, words in AGNEWS_PATTERNS.items()}

# A number: optional sign, digits with optional thousands groups, optional decimals; or a bare ".5".
_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
_NUM_RE = re.compile(r"(?<![\w.])(?:" + _NUM + r")")
_FINAL_RE = re.compile(r"the final answer is\s*:?", re.IGNORECASE)


def sst2_prediction(answer: str) -> str | None:
    """``positive`` / ``negative`` when the stripped answer is exactly one of the four accepted forms, else None."""
    return SST2_EXACT.get((answer or "").strip())


def bbq_prediction(answer: str) -> str | None:
    """``A`` / ``B`` / ``C`` when the stripped answer is exactly that letter, else None."""
    a = (answer or "").strip()
    return a if a in BBQ_LETTERS else None


def agnews_matches(answer: str, label: str) -> bool:
    """True when a word of ``label`` (see :data:`AGNEWS_PATTERNS`) occurs in ``answer``."""
    if label not in _AG_RE:
        raise ValueError(f"unknown AG News label {label!r}; one of {list(AGNEWS_PATTERNS)}")
    return bool(_AG_RE[label].search(answer or ""))


def agnews_prediction(answer: str) -> str | None:
    """The category whose words occur first in ``answer`` (None when none does)."""
    best, pos = None, math.inf
    for label, rx in _AG_RE.items():
        m = rx.search(answer or "")
        if m and m.start() < pos:
            best, pos = label, m.start()
    return best


def parse_number(text: str) -> float | None:
    """``"1,234.5"`` -> 1234.5; None when ``text`` is not one number."""
    t = text.strip().replace(",", "")
    try:
        return float(t)
    except ValueError:
        return None


def _numbers(text: str) -> list[float]:
    return [float(m.group(0).replace(",", "")) for m in _NUM_RE.finditer(text)]


def gsm8k_extract(answer: str) -> float | None:
    """The final answer of a GSM8K solution (see the module doc), or None when there is no number."""
    text = answer or ""
    for rx in (_FINAL_RE, re.compile(r"####")):
        marks = list(rx.finditer(text))
        if marks:
            nums = _numbers(text[marks[-1].end():])
            if nums:
                return nums[0]
    nums = _numbers(text)
    return nums[-1] if nums else None


def gsm8k_correct(answer: str, gold: str | float) -> bool:
    """True when the extracted number equals ``gold`` as floats (gold may carry commas)."""
    g = gold if isinstance(gold, (int, float)) else parse_number(str(gold))
    if g is None:
        raise ValueError(f"GSM8K gold answer {gold!r} is not a number")
    p = gsm8k_extract(answer)
    return p is not None and math.isclose(p, float(g), rel_tol=1e-9, abs_tol=1e-9)


def prediction(task: str, answer: str) -> str | float | None:
    """What the answer says, for the record: a label (SST-2, AG News, BBQ) or a number (GSM8K)."""
    if task == "sst2":
        return sst2_prediction(answer)
    if task == "agnews":
        return agnews_prediction(answer)
    if task == "gsm8k":
        return gsm8k_extract(answer)
    if task == "bbq":
        return bbq_prediction(answer)
    raise ValueError(f"unknown task {task!r}")


def is_correct(task: str, answer: str, label: str) -> bool:
    """Whether ``answer`` is correct for the gold ``label`` under the task's rule (module doc)."""
    if task == "sst2":
        gold = str(label).strip().lower()
        if gold not in ("positive", "negative"):
            raise ValueError(f"SST-2 label {label!r} is not positive/negative")
        return sst2_prediction(answer) == gold
    if task == "agnews":
        return agnews_matches(answer, label)
    if task == "gsm8k":
        return gsm8k_correct(answer, label)
    if task == "bbq":
        gold = str(label).strip()
        if gold not in BBQ_LETTERS:
            raise ValueError(f"BBQ label {label!r} is not one of {BBQ_LETTERS}")
        return bbq_prediction(answer) == gold
    raise ValueError(f"unknown task {task!r}")
