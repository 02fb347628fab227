"""The measured refinement loop, for any kind of search: the measurement, not the model, has the last word.

A latency model predicts; a shared machine's speed drifts and no model is exact. So a search is
run at a *predicted* budget, its decision realised and measured, and while the measured latency
fraction misses the requested one the predicted budget is scaled by (requested / measured) and
the search runs again (once rounds bracket the request, never outside that bracket: its midpoint).
A round *meets* the budget when its measured fraction is within
``TOLERANCE`` of the request, on either side; the choice is the widest round that meets it (the
largest measured fraction), else the round nearest the request. Where nothing can be measured
(a device this host cannot run) there is one round, chosen as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from hwprune.errors import PlanError

TOLERANCE = 0.05  # relative: a round meets a request for 0.60 when it measures within 0.57 .. 0.63

D = TypeVar("D")  # a search's decision
R = TypeVar("R")  # what realising and measuring a decision gave


@dataclass
class Round(Generic[D, R]):
    predicted_budget_ms: float
    decision: D
    fraction: float | None  # measured latency fraction; None: not measurable here
    realised: R


def meets(fraction: float | None, requested: float, tolerance: float = TOLERANCE) -> bool:
    return fraction is not None and abs(fraction - requested) <= tolerance * requested * (1 + 1e-9)


def refine(search: Callable[[float], D], realise: Callable[[D], tuple[float | None, R]], requested: float,
           predicted_budget: float, rounds: int, on_round: Callable[[Round], None] | None = None,
           tolerance: float = TOLERANCE) -> list[Round[D, R]]:
    """Up to ``rounds`` rounds of search -> realise and measure, re-searching at a scaled predicted
    budget until one meets ``requested``. A search that finds no solution ends the loop (and is an
    error in the first round)."""
    done: list[Round[D, R]] = []
    for _ in range(rounds):
        try:
            decision = search(predicted_budget)
        except PlanError:
            if not done:
                raise
            break
        fraction, realised = realise(decision)
        done.append(Round(predicted_budget, decision, fraction, realised))
        if on_round is not None:
            on_round(done[-1])
        if fraction is None or meets(fraction, requested, tolerance):
            break
        predicted_budget = _next_budget(done, requested, predicted_budget * requested / fraction)
    return done


def _next_budget(done: list[Round], requested: float, scaled: float) -> float:
    """``scaled``, unless rounds already bracket the request (one measured too fast at a lower budget, one
    too slow at a higher) and it falls outside that bracket: then the bracket's midpoint. Coarse choices
    (whole layers) make the rescaling jump past the budget that fits, and back to one already tried."""
    low = max((r.predicted_budget_ms for r in done if r.fraction < requested), default=None)
    high = min((r.predicted_budget_ms for r in done if r.fraction > requested), default=None)
    if low is not None and high is not None and low < high and not low < scaled < high:
        return (low + high) / 2
    return scaled


def pick(rounds: list[Round[D, R]], requested: float, tolerance: float = TOLERANCE) -> Round[D, R]:
    """The widest round that meets the request, else the one measured nearest it (unmeasured: the last)."""
    measured = [r for r in rounds if r.fraction is not None]
    if not measured:
        return rounds[-1]
    meeting = [r for r in measured if meets(r.fraction, requested, tolerance)]
    if meeting:
        return max(meeting, key=lambda r: r.fraction)
    return min(measured, key=lambda r: abs(r.fraction - requested))
