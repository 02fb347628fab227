"""Whether a measured model meets its latency request, and how sure that is: met, missed or undecided.

One median of a noisy machine is one sample; the verdict pools every interleaved pair (a round's pruned
median over the baseline's in the same round) measured on the chosen model, in its refinement round and in
the final run, and takes their median with a distribution-free 95% confidence interval (order statistics of
the binomial, as for any median: no assumption on the noise's shape, and no random resampling, so the same
pairs always give the same verdict). The request's band is ``requested * (1 +- tolerance)``: the verdict is
*met* when the whole interval lies inside it, *missed* when it lies wholly outside, and *undecided* when it
crosses an edge, with about how many more pairs would shrink it enough (the interval narrows as 1/sqrt(n)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


class Outcome(str, Enum):
    MET = "met"
    MISSED = "missed"
    UNDECIDED = "undecided"
    NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Verdict:
    """``fraction``: the pooled median of ``pairs`` paired ratios (pruned / baseline latency) with its 95%
    interval ``low`` .. ``high``; ``more_pairs``: for an undecided verdict, about how many more pairs would
    decide it (None where more cannot: the median sits on the band's edge)."""

    outcome: Outcome
    requested: float
    tolerance: float
    fraction: float | None = None
    low: float | None = None
    high: float | None = None
    pairs: int = 0
    more_pairs: int | None = None

    @property
    def band(self) -> tuple[float, float]:
        return self.requested * (1 - self.tolerance), self.requested * (1 + self.tolerance)

    @property
    def speedup_interval(self) -> tuple[float, float] | None:
        """The speedup's 95% interval (the fraction's, inverted)."""
        return None if self.low is None or self.high is None else (1 / self.high, 1 / self.low)


def median_interval(samples: Sequence[float]) -> tuple[float, float, float]:
    """The median of ``samples`` and its distribution-free 95% interval (order statistics: the interval
    between the k-th smallest and k-th largest, k from the binomial's normal approximation; the whole range
    for fewer than 6 samples, where no narrower one holds 95%)."""
    data = sorted(samples)
    n = len(data)
    if n == 0:
        raise ValueError("no samples")
    median = (data[(n - 1) // 2] + data[n // 2]) / 2
    k = max(0, math.floor((n - Z95 * math.sqrt(n)) / 2))
    return median, data[min(k, n - 1)], data[max(n - 1 - k, 0)]


def judge(pairs: Sequence[float], requested: float, tolerance: float) -> Verdict:
    """The verdict on paired ratios ``pairs`` against ``requested`` within ``tolerance`` (relative)."""
    if not pairs:
        return Verdict(Outcome.NOT_MEASURED, requested, tolerance)
    fraction, low, high = median_interval(pairs)
    lower, upper = requested * (1 - tolerance), requested * (1 + tolerance)
    if lower <= low and high <= upper:
        return Verdict(Outcome.MET, requested, tolerance, fraction, low, high, len(pairs))
    if high < lower or low > upper:
        return Verdict(Outcome.MISSED, requested, tolerance, fraction, low, high, len(pairs))
    return Verdict(Outcome.UNDECIDED, requested, tolerance, fraction, low, high, len(pairs),
                   _more_pairs(fraction, low, high, len(pairs), lower, upper))


def _more_pairs(fraction: float, low: float, high: float, n: int, lower: float, upper: float) -> int | None:
    """About how many more pairs would shrink the interval (as 1/sqrt(n)) to leave ``fraction``'s side of
    the nearest band edge."""
    edge = min((lower, upper), key=lambda e: abs(fraction - e))
    room = abs(fraction - edge)
    half = (high - low) / 2
    if room == 0 or half == 0:
        return None
    needed = math.ceil(n * (half / room) ** 2)
    return max(needed - n, 1)
