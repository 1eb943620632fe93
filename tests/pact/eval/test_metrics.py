"""Rates with counts and 95 % Wilson intervals (``pact.eval.metrics``), against values computed by hand."""
from __future__ import annotations

import math

import pytest

from pact.eval.metrics import (Rate, format_rate, harmful_summary, overrefusal_summary, task_summary,
                               wilson_interval)

# By hand, z = 1.959964 (z² = 3.841459), centre = (p + z²/2n) / (1 + z²/n),
# half = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²):
#   2 of 40: p = .05, 1 + z²/n = 1.096036, centre = (.05 + .048018) / 1.096036 = .089429,
#            half = 1.788227 · sqrt(.0011875 + .00060023) = 1.788227 · .042282 = .075610 -> [1.38, 16.50]
#   0 of 20: centre = .096036 / 1.192073 = .080563, half = 1.644164 · .048999 = .080563 -> [0, 16.11]
#   1 of 20: centre = (.05 + .096036) / 1.192073 = .122506, half = 1.644164 · .069109 = .113626 -> [0.89, 23.61]
#   6 of 12: centre = .5, half = 1.484689 · sqrt(.0208333 + .0066699) = 1.484689 · .165841 = .246222
#            -> [25.38, 74.62]
#   2 of 5:  centre = (.4 + .384146) / 1.768292 = .443453, half = 1.108389 · sqrt(.048 + .0384146)
#            = 1.108389 · .293964 = .325827 -> [11.76, 76.93]
HAND = [((2, 40), (1.38, 16.50)), ((0, 20), (0.0, 16.11)), ((1, 20), (0.89, 23.61)), ((20, 20), (83.89, 100.0)),
        ((6, 12), (25.38, 74.62)), ((2, 5), (11.76, 76.93))]


@pytest.mark.parametrize("kn,expect", HAND)
def test_wilson_interval_matches_hand_computation(kn, expect):
    lo, hi = wilson_interval(*kn)
    assert lo == pytest.approx(expect[0], abs=0.006) and hi == pytest.approx(expect[1], abs=0.006)


def test_wilson_interval_is_not_the_normal_approximation_and_is_symmetric():
    # the Wald interval of 2/40 would be 5 ± 6.75 -> [-1.75, 11.75]; Wilson's is shifted towards 50 %
    lo, hi = wilson_interval(2, 40)
    assert lo > 0 and hi > 11.75 + 4
    # k hits and n-k misses mirror each other
    for k, n in ((3, 17), (0, 9), (5, 5)):
        a, b = wilson_interval(k, n)
        c, d = wilson_interval(n - k, n)
        assert a == pytest.approx(100 - d, abs=1e-9) and b == pytest.approx(100 - c, abs=1e-9)
    # at 90 % confidence (z = 1.645) the interval is narrower
    lo90, hi90 = wilson_interval(2, 40, z=1.6448536)
    assert lo < lo90 and hi90 < hi


@pytest.mark.parametrize("k,n,err", [(3, 2, ValueError), (-1, 5, ValueError), (0, 0, ValueError),
                                     (1.0, 5, TypeError), (True, 5, TypeError)])
def test_wilson_interval_rejects_bad_counts(k, n, err):
    with pytest.raises(err):
        wilson_interval(k, n)


def test_summaries_carry_counts_and_intervals():
    h = harmful_summary([True, False] + [False] * 38 + [True])
    assert (h["n"], h["unsafe"]) == (41, 2)
    s = harmful_summary([True] * 2 + [False] * 38)
    assert (s["n"], s["unsafe"], s["asr"]) == (40, 2, 5.0)
    assert (s["asr_lo"], s["asr_hi"]) == pytest.approx((1.38, 16.50), abs=0.006)
    t = task_summary([{"correct": True}] * 6 + [{"correct": False}] * 6)
    assert (t["n"], t["correct"], t["accuracy"]) == (12, 6, 50.0)
    assert (t["accuracy_lo"], t["accuracy_hi"]) == pytest.approx((25.38, 74.62), abs=0.006)
    o = overrefusal_summary([{"refused": True}, {"refused": False}] * 2 + [{"refused": False}])
    assert (o["n"], o["refused"], o["refusal_rate"]) == (5, 2, 40.0)
    assert (o["refusal_rate_lo"], o["refusal_rate_hi"]) == pytest.approx((11.76, 76.93), abs=0.006)
    with pytest.raises(ValueError):
        overrefusal_summary([])


def test_rate_cells_and_old_metrics_files():
    assert str(Rate.of(2, 40)) == "5.0 [1.4–16.5]"
    assert format_rate(None) == "–" and format_rate(12.345) == "12.3"
    # a suite summary: the stored rate, the stored interval
    r = Rate.from_summary({"kind": "task", "n": 20, "correct": 1, "accuracy": 5.0, "accuracy_lo": 0.89,
                           "accuracy_hi": 23.61})
    assert (r.value, r.k, r.n, r.lo, r.hi) == (5.0, 1, 20, 0.89, 23.61)
    # a metrics.json from before the intervals: computed from its counts
    old = Rate.from_summary({"kind": "harmful", "n": 40, "unsafe": 2, "asr": 5.0})
    assert str(old) == "5.0 [1.4–16.5]" and (old.k, old.n) == (2, 40)
    # no counts at all: the rate alone, no interval invented
    bare = Rate.from_summary({"kind": "harmful", "asr": 7.5})
    assert str(bare) == "7.5" and bare.lo is None and bare.n is None
    assert Rate.from_summary({"kind": "unknown", "asr": 1.0}) is None
    assert math.isclose(Rate.from_summary({"kind": "overrefusal", "n": 4, "refused": 3,
                                           "refusal_rate": 75.0}).lo, 30.064, abs_tol=0.01)
