"""The budget's verdict on pooled interleaved pairs: met, missed or undecided, with a 95% interval that does not
depend on the noise's shape, and how many more pairs would decide."""

import pytest

from hwprune.search.verdict import Outcome, judge, median_interval


def test_the_median_interval_is_order_statistics_and_holds_the_median():
    samples = [0.50 + 0.001 * i for i in range(41)]  # 0.500 .. 0.540
    median, low, high = median_interval(samples)
    assert median == pytest.approx(0.52)
    # k = floor((41 - 1.96 * sqrt(41)) / 2) = 14: the 15th smallest and the 15th largest
    assert (low, high) == (samples[14], samples[26])
    assert median_interval([0.4, 0.6, 0.5]) == (0.5, 0.4, 0.6)  # few samples: the whole range


def test_met_missed_and_undecided():
    tight = [0.60 + 0.002 * ((i % 5) - 2) for i in range(40)]  # 0.596 .. 0.604 around 0.60
    assert judge(tight, 0.60, 0.05).outcome == Outcome.MET
    assert judge([f + 0.10 for f in tight], 0.60, 0.05).outcome == Outcome.MISSED
    edge = [0.63 + 0.004 * ((i % 5) - 2) for i in range(40)]  # around the band's upper edge, 0.63
    assert judge(edge, 0.60, 0.05).outcome == Outcome.UNDECIDED
    assert judge([], 0.60, 0.05).outcome == Outcome.NOT_MEASURED


def test_an_undecided_verdict_says_how_many_more_pairs_would_decide():
    spread = [0.615 + 0.02 * ((i % 7) - 3) for i in range(30)]  # median 0.615, wide: crosses 0.63
    verdict = judge(spread, 0.60, 0.05)
    assert verdict.outcome == Outcome.UNDECIDED and verdict.more_pairs is not None and verdict.more_pairs > 0
    low, high = verdict.speedup_interval
    assert low == pytest.approx(1 / verdict.high) and high == pytest.approx(1 / verdict.low)


def test_the_tolerance_sets_the_band():
    pairs = [0.62] * 20
    assert judge(pairs, 0.60, 0.05).outcome == Outcome.MET
    assert judge(pairs, 0.60, 0.02).outcome == Outcome.MISSED
