"""The refinement loop's ``learn`` for a search problem: each measured round refits the per-option
correction (``cost.correction`` says what it is and why; ``fit`` fits it) and the problem searches with the
corrected predictor from then on.

Rounds were searched under different corrections, so a budget the loop asked for is in the currency of
the predictor of its day. What the loop rescales from is each round's budget moved by what the newest
correction changes in that round's prediction: the rounds then speak of one predictor, and an error
the correction explains is not also rescaled away.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hwprune.cost.correction import Correction
from hwprune.cost.predictor import TablePredictor
from hwprune.search.decide import SearchProblem
from hwprune.search.refine import Round

LIMIT = 1.0  # |a| at most: an option never saves more than twice its prediction, nor costs time


@dataclass(frozen=True)
class MeasuredRound:
    """A measured round as the fit sees it: the search's keep counts and depth options, and the latency
    measured as a fraction of the baseline's."""

    counts: dict[str, int]
    depth: frozenset[str]
    fraction: float


def fit(predictor: TablePredictor, rounds: Sequence[MeasuredRound]) -> Correction:
    """The per-option correction explaining the measured rounds' errors (module docstring); ``predictor``
    uncorrected."""
    names = sorted(frozenset().union(*(r.depth for r in rounds)))
    if not names:
        return Correction(rounds=len(rounds))
    base = predictor.predict({}).total_ms
    predicted = np.array([predictor.with_depth(r.depth).predict(r.counts).total_ms for r in rounds])
    x = np.array([[_saving(predictor, r, name, ms) for name in names] for r, ms in zip(rounds, predicted, strict=True)])
    errors = np.array([r.fraction for r in rounds]) * base - predicted
    shares = np.clip(np.linalg.pinv(x, rcond=1e-6) @ errors, -LIMIT, LIMIT)
    options_ms = {}
    for j, name in enumerate(names):
        taken = x[:, j][x[:, j] != 0]
        if abs(shares[j]) > 1e-9 and taken.size:
            options_ms[name] = float(shares[j] * taken.mean())
    return Correction(options_ms, len(rounds))


def _saving(predictor: TablePredictor, measured: MeasuredRound, key: str, predicted_ms: float) -> float:
    """Option ``key``'s predicted saving in the round's model, predicted at ``predicted_ms`` (0 where the round
    did not take it)."""
    if key not in measured.depth:
        return 0.0
    return predictor.with_depth(measured.depth - {key}).predict(measured.counts).total_ms - predicted_ms



@dataclass
class Learner:
    """Callable as ``refine(..., learn=)``: corrects ``problem.predictor`` from ``predictor`` (uncorrected) and
    answers, per round, the shift of its budget into the corrected predictor's currency."""

    problem: SearchProblem
    predictor: TablePredictor
    told: Callable[[Correction], None] | None = None
    applied: list[float] = field(default_factory=list)  # per round, what its search's correction added to it

    def __call__(self, rounds: list[Round]) -> list[float]:
        for r in rounds[len(self.applied):]:
            self.applied.append(self.problem.predictor.option_ms(r.decision.search.depth))
        correction = fit(self.predictor, [MeasuredRound(r.decision.search.counts, r.decision.search.depth, r.fraction)
                                          for r in rounds])
        if correction and self.told is not None:
            self.told(correction)
        self.problem.predictor = self.predictor.corrected(correction)
        return [self.problem.predictor.option_ms(r.decision.search.depth) - then
                for r, then in zip(rounds, self.applied, strict=True)]
