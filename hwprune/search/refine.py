"""The measured refinement loop, for any kind of search: the measurement, not the model, has the last word.

A latency model predicts; a shared machine's speed drifts and no model is exact. So a search is run at a
*predicted* budget, its decision realised and measured, and while the measured latency fraction is off the
requested one the predicted budget is scaled by (requested / measured) and the search runs again.

- **Aim at the request, not the band's edge**: rounds go on while the last one measured outside an inner
  band (``INNER`` of the tolerance: +-2% for the default +-5%), and the round measured nearest the request
  is chosen. Whether it meets the budget is the verdict's to say (``search.verdict``), on every pair
  measured on it.
- **Rounds are budgeted by time**: after the first, a round starts only if the rounds so far say it ends
  within ``seconds`` (a 4-second round can run ten times, a 30-second one twice); ``rounds`` is the most.
  A first round measured outside the band is corrected once whatever its time (a 0.5B decoder's round takes
  three to four minutes; its first round, on a table profiled on a busy machine, measured 0.83 for 0.70).
- **Bracketing**: once rounds bracket the request (one too fast at a lower budget, one too slow at a
  higher), the next budget is interpolated between them, never outside. Coarse choices (whole layers) make
  the rescaling jump past the budget that fits; where the bracketing rounds differ in structure (which
  layers or blocks they drop or merge), the structure of the one nearest the request is held and only the
  widths move from then on (fine-grained), the search told so through ``hold``.
- **Per-option correction**: the rescaling fixes an error common to the whole model; an option priced
  wrong relative to the rest is learned from the rounds that took it and those that did not
  (``cost.correction``), through ``learn``, before the next search.

Where nothing can be measured (a device this host cannot run) there is one round, chosen as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from hwprune.errors import PlanError

TOLERANCE = 0.05  # relative: the verdict's band for a request of 0.60 is 0.57 .. 0.63
INNER = 0.4  # of the tolerance: rounds go on while outside +-2% (for +-5%)
SECONDS = 60.0  # default time for the rounds after the first
ROUNDS = 10  # default most rounds, the first included

D = TypeVar("D")  # a search's decision
R = TypeVar("R")  # what realising and measuring a decision gave


@dataclass
class Round(Generic[D, R]):
    predicted_budget_ms: float
    decision: D
    fraction: float | None  # measured latency fraction; None: not measurable here
    realised: R
    seconds: float = 0.0  # the round's wall time: search, realise, measure
    held: bool = False  # searched with the structure held, widths only


@dataclass(frozen=True)
class Refinement:
    """When the loop stops: ``tolerance`` (the verdict's band; the loop aims inside ``INNER`` of it),
    ``rounds`` at most, ``seconds`` for the rounds after the first."""

    tolerance: float = TOLERANCE
    rounds: int = ROUNDS
    seconds: float = SECONDS

    def close_enough(self, fraction: float, requested: float) -> bool:
        return self.inside(fraction, requested, INNER)

    def inside(self, fraction: float, requested: float, share: float = 1.0) -> bool:
        """Whether ``fraction`` is inside ``share`` of the verdict's band (all of it by default)."""
        return abs(fraction - requested) <= share * self.tolerance * requested * (1 + 1e-9)


def refine(search: Callable[[float, Hashable | None], D], realise: Callable[[D], tuple[float | None, R]],
           requested: float, predicted_budget: float, settings: Refinement = Refinement(),
           on_round: Callable[[Round], None] | None = None, structure: Callable[[D], Hashable] | None = None,
           learn: Callable[[list[Round[D, R]]], list[float]] | None = None,
           clock: Callable[[], float] = time.monotonic) -> list[Round[D, R]]:
    """Rounds of search (at a predicted budget, the structure to hold or None) -> realise and measure, until
    one lands close to ``requested``, the rounds or the time run out, or a later search finds nothing (in
    the first round that is an error). ``structure`` tells a decision's structure (None: never held);
    ``learn`` hears of the rounds so far before each next search (the search's per-option correction,
    ``cost.correction``, ``search.learn``) and answers how far each round's budget moves into the corrected
    predictor's currency: the budget is rescaled from those, so nothing is corrected twice."""
    done: list[Round[D, R]] = []
    hold: Hashable | None = None
    started = clock()
    while len(done) < settings.rounds:
        missed_first = len(done) == 1 and not settings.inside(done[0].fraction, requested)
        if done and not missed_first and not _time_for_another(done, started, settings.seconds, clock()):
            break
        begun = clock()
        try:
            decision = search(predicted_budget, hold)
        except PlanError:
            if not done:
                raise
            break
        fraction, realised = realise(decision)
        done.append(Round(predicted_budget, decision, fraction, realised, clock() - begun, hold is not None))
        if on_round is not None:
            on_round(done[-1])
        if fraction is None or settings.close_enough(fraction, requested):
            break
        steering = done
        if learn is not None:  # each round's budget in the currency of the corrected predictor (where it has one)
            steering = [replace(r, predicted_budget_ms=r.predicted_budget_ms + shift)
                        if r.predicted_budget_ms + shift > 0 else r for r, shift in zip(done, learn(done), strict=True)]
        if hold is None and structure is not None:
            hold = _structure_to_hold(done, requested, structure)
        predicted_budget = _next_budget([r for r in steering if hold is None or structure(r.decision) == hold],
                                        requested)
        if not predicted_budget > 0:  # nothing measured says where a smaller model would land
            break
    return done


def _time_for_another(done: list[Round], started: float, seconds: float, now: float) -> bool:
    """Whether one more round, as long as the rounds after the first took on average (the first also
    scores and sets up), ends within ``seconds`` of the first round's end."""
    later = done[1:] or done
    expected = sum(r.seconds for r in later) / len(later)
    return now + expected - (started + done[0].seconds) <= seconds


def _structure_to_hold(done: list[Round], requested: float, structure: Callable[[object], Hashable]
                       ) -> Hashable | None:
    """Once rounds bracket the request with different structures, the structure of the round nearest it."""
    below = [r for r in done if r.fraction < requested]
    above = [r for r in done if r.fraction > requested]
    if not below or not above:
        return None
    low, high = max(below, key=lambda r: r.fraction), min(above, key=lambda r: r.fraction)
    if structure(low.decision) == structure(high.decision):
        return None
    return structure(min((low, high), key=lambda r: abs(r.fraction - requested)).decision)


def _next_budget(done: list[Round], requested: float) -> float:
    """The last round's budget scaled by requested / measured, unless rounds bracket the request (one measured
    too fast at a lower budget, one too slow at a higher): then the budget the two nearest predict by linear
    interpolation (their midpoint where they measured alike), which also holds where latency is not
    proportional to the budget (a fixed part the search cannot touch)."""
    last = done[-1]
    scaled = last.predicted_budget_ms * requested / last.fraction
    low = max((r for r in done if r.fraction < requested), key=lambda r: r.predicted_budget_ms, default=None)
    high = min((r for r in done if r.fraction > requested), key=lambda r: r.predicted_budget_ms, default=None)
    if low is None or high is None or low.predicted_budget_ms >= high.predicted_budget_ms:
        return scaled
    span = high.predicted_budget_ms - low.predicted_budget_ms
    if high.fraction - low.fraction <= 0:
        return low.predicted_budget_ms + span / 2
    return low.predicted_budget_ms + span * (requested - low.fraction) / (high.fraction - low.fraction)


def pick(rounds: list[Round[D, R]], requested: float) -> Round[D, R]:
    """The round measured nearest the request (unmeasured: the last)."""
    measured = [r for r in rounds if r.fraction is not None]
    if not measured:
        return rounds[-1]
    return min(measured, key=lambda r: abs(r.fraction - requested))
