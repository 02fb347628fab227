"""The refinement loop's ``learn`` for a search problem: each measured round refits the per-option
correction (``cost.correction``) and the problem searches with the corrected predictor from then on.

Rounds were searched under different corrections, so a budget the loop asked for is in the currency of
the predictor of its day. What the loop rescales from is each round's budget moved by what the newest
correction changes in that round's prediction: the rounds then speak of one predictor, and an error
the correction explains is not also rescaled away.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hwprune.cost.correction import Correction, MeasuredRound, fit
from hwprune.cost.predictor import TablePredictor
from hwprune.search.decide import SearchProblem
from hwprune.search.refine import Round


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
