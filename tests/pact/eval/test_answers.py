"""Task answer rules (RECIPES: SST-2 exact, AG News word match, GSM8K final number; BBQ exact letter) on tricky answers."""
from __future__ import annotations

import pytest

from pact.eval.answers import (
    agnews_matches,
    agnews_prediction,
    bbq_prediction,
    gsm8k_correct,
    gsm8k_extract,
    is_correct,
    prediction,
    sst2_prediction,
)
from pact.eval.metrics import accuracy


@pytest.mark.parametrize("answer, expected", [
    ("The final answer is: 1,234", 1234.0),                      # thousands comma
    ("The final answer is: $18.50 per hour", 18.5),              # currency and unit
    ("She pays 3 * 4 = 12 dollars.\nThe final answer is: 12", 12.0),
    ("The final answer is: 7 apples, and 3 left over", 7.0),     # first number after the marker
    ("the final answer is 42.", 42.0),                           # lower case, no colon, sentence period
    ("The final answer is: -3", -3.0),                           # sign
    ("5 + 6 = 11\n#### 11", 11.0),                               # GSM8K's own convention
    ("Step 1: 3 apples. Step 2: 5 pears. Total 8 fruits.", 8.0),  # last-number fallback
    ("It costs 1,000,000 dollars in 2024", 2024.0),              # the last number, not the biggest
    ("10-5=5", 5.0),                                             # minus between numbers is not a sign
    ("1,2,3", 3.0),                                              # a list is not a thousands group
    ("The final answer is: 0.5", 0.5),
    ("no digits at all", None),
    ("", None),
    ("The final answer is: 12 ... wait, The final answer is: 13", 13.0),  # the last marker wins
])
def test_gsm8k_extract(answer, expected):
    assert gsm8k_extract(answer) == expected


def test_gsm8k_correct_compares_as_floats():
    assert gsm8k_correct("The final answer is: 18.00", "18")
    assert gsm8k_correct("The final answer is: 1,000", "1000")
    assert gsm8k_correct("#### 1000", "1,000")
    assert not gsm8k_correct("The final answer is: 18.5", "18")
    assert not gsm8k_correct("I don't know", "18")
    # a marker with a wrong number is wrong even if the right one appears earlier
    assert not gsm8k_correct("18 is tempting, but The final answer is: 20", "18")
    with pytest.raises(ValueError):
        gsm8k_correct("12", "twelve")


@pytest.mark.parametrize("answer, pred", [
    ("positive", "positive"), ("Positive", "positive"), ("  negative\n", "negative"), ("Negative", "negative"),
    ("POSITIVE", None), ("positive.", None), ("The sentiment is positive", None), ("Positive!", None),
    ("neutral", None), ("", None),
])
def test_sst2_exact_rule(answer, pred):
    assert sst2_prediction(answer) == pred


def test_sst2_is_correct_against_gold_in_any_case():
    assert is_correct("sst2", "Positive", "positive")
    assert is_correct("sst2", "negative", "Negative")
    assert not is_correct("sst2", "positive", "negative")
    assert not is_correct("sst2", "POSITIVE", "positive")  # the authors' exact rule
    with pytest.raises(ValueError):
        is_correct("sst2", "positive", "neutral")


@pytest.mark.parametrize("answer, label, ok", [
    ("Sports", "Sports", True),
    ("SPORTS", "Sports", True),                 # label word in another case
    ("sports.", "Sports", True),
    ("The category is world news", "World", True),
    ("worldwide", "World", False),              # a whole word, not a substring
    ("Sci/Tech", "Sci/Tech", True),
    ("Technology", "Sci/Tech", True),
    ("tech", "Sci/Tech", True),
    ("science", "Sci/Tech", False),             # not one of the accepted words
    ("Business", "Sci/Tech", False),
    ("Business or Sports", "Sports", True),     # lenient: naming several counts for each
    ("", "World", False),
])
def test_agnews_word_match(answer, label, ok):
    assert agnews_matches(answer, label) is ok
    assert is_correct("agnews", answer, label) is ok


def test_agnews_prediction_is_first_named():
    assert agnews_prediction("Business, maybe Sports") == "Business"
    assert agnews_prediction("it is about TECH") == "Sci/Tech"
    assert agnews_prediction("no idea") is None
    with pytest.raises(ValueError):
        agnews_matches("World", "Politics")


def test_task_accuracy_on_hand_labelled_answers():
    rows = [("sst2", "positive", "positive"), ("sst2", "Negative", "negative"), ("sst2", "positive.", "positive"),
            ("agnews", "World", "World"), ("agnews", "sports", "Business"),
            ("gsm8k", "The final answer is: 2,280", "2280"), ("gsm8k", "so 5 and then 7", "5")]
    flags = [is_correct(t, a, g) for t, a, g in rows]
    assert flags == [True, True, False, True, False, True, False]
    assert accuracy(flags) == pytest.approx(100 * 4 / 7)
    assert prediction("gsm8k", "The final answer is: 2,280") == 2280.0
    with pytest.raises(ValueError):
        prediction("mnli", "x")


@pytest.mark.parametrize("answer, letter", [
    ("A", "A"), ("  B\n", "B"), ("C", "C"),                # the letter alone, surrounding whitespace stripped
    ("A)", None), ("(A)", None), ("A.", None),             # anything around the letter: wrong, like SST-2's rule
    ("a", None), ("D", None), ("", None),                  # lower case; not an option; empty
    ("A) The European chemical engineer", None),           # M_base's usual style: letter plus option text
    ("The answer is A", None), ("Answer: B", None),
    ("As an AI, I cannot judge people.", None),            # a refusal that starts with an option letter
    ("AB", None),
])
def test_bbq_prediction_is_the_exact_letter(answer, letter):
    assert bbq_prediction(answer) == letter
    assert prediction("bbq", answer) == letter


def test_bbq_correct_only_for_the_gold_letter():
    answers = ["A", " C ", "B) Not answerable", "C", "b"]
    gold = ["A", "C", "B", "A", "B"]
    flags = [is_correct("bbq", a, g) for a, g in zip(answers, gold)]
    assert flags == [True, True, False, False, False]
    assert accuracy(flags) == 40.0
    with pytest.raises(ValueError, match="BBQ label"):
        is_correct("bbq", "A", "D")
