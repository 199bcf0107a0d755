from __future__ import annotations

import math

import pytest

from music.evaluate.stats import accuracy_summary, bootstrap_interval, strict_wins, wilson_interval


def test_wilson_known_values():
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson_interval(0, 8)
    assert lo == 0.0 and hi == pytest.approx(0.3244, abs=1e-4)  # not a zero-width interval
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    vals = [1, 0, 1, 1, 0, 1, 0, 1]
    a = bootstrap_interval(vals, seed=3)
    assert a == bootstrap_interval(vals, seed=3)
    assert a[0] < sum(vals) / len(vals) < a[1]


def test_ties_are_wrong():
    assert strict_wins([1.0, 2.0, 3.0], [1.0, 1.0, 4.0]) == [False, True, False]
    s = accuracy_summary([True, False])
    assert s["accuracy"] == 0.5 and s["n"] == 2 and s["ci_low"] < 0.5 < s["ci_high"]
    assert accuracy_summary([])["accuracy"] is None


def test_wilson_interval_always_contains_the_rate():
    from music.evaluate.stats import wilson_interval

    for n in range(1, 40):
        for k in (0, n):
            low, high = wilson_interval(k, n)
            assert low <= k / n <= high, (k, n, low, high)
