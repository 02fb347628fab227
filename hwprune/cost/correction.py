"""What measured rounds teach the predictor about single depth options: a per-option correction.

A round measures a whole model; the refinement loop (``search.refine``) rescales the budget by what it
measured against what it asked for. That fixes an error the whole model shares, not an option priced
wrong against the rest: a block whose removal saves a fifth of what the table says is chosen round after
round, and the widths are cut to pay for it. Depth options (merged spans, dropped blocks, N:M layers) are
where a table is least sure (one merged conv, a model without a block), so a round's error is laid on the
depth options it took, in proportion to their predicted savings, and pooled over the rounds by least
squares (the smallest shares that explain them: an option always taken with the same others is not
told apart from them):

    measured_r - predicted_r = sum_k a_k * x_rk

``x_rk`` is option k's predicted saving in round r (the model with it minus without it, 0 where not
taken); ``a_k``, clipped to [-1, 1], the share of its saving it does not deliver. The corrected predictor
adds ``a_k x_k`` whenever k is taken (``TablePredictor.corrected``); the budget's rescaling then starts
from the corrected predictions, so it fixes only what the correction does not explain (a round without
depth options, an error beyond the clip).

Widths are not corrected per group: a width search moves every group a little each round, so with R
rounds and a hundred groups a fit would explain R noisy measurements exactly and call the noise a
correction; a smooth error over the widths is what the rescaling fixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hwprune.cost.predictor import TablePredictor

LIMIT = 1.0  # |a| at most: an option never saves more than twice its prediction, nor costs time


@dataclass(frozen=True)
class Correction:
    """Per depth option, the milliseconds added to a prediction that takes it."""

    options_ms: dict[str, float] = field(default_factory=dict)
    rounds: int = 0  # the measured rounds it was fitted on

    def __bool__(self) -> bool:
        return bool(self.options_ms)


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
    x = np.array([[_saving(predictor, r, name) for name in names] for r in rounds])
    errors = np.array([r.fraction for r in rounds]) * base - predicted
    shares = np.clip(np.linalg.pinv(x, rcond=1e-6) @ errors, -LIMIT, LIMIT)
    options_ms = {}
    for j, name in enumerate(names):
        taken = x[:, j][x[:, j] != 0]
        if abs(shares[j]) > 1e-9 and taken.size:
            options_ms[name] = float(shares[j] * taken.mean())
    return Correction(options_ms, len(rounds))


def _saving(predictor: TablePredictor, measured: MeasuredRound, key: str) -> float:
    """Option ``key``'s predicted saving in the round's model (0 where the round did not take it)."""
    if key not in measured.depth:
        return 0.0
    without = predictor.with_depth(measured.depth - {key}).predict(measured.counts).total_ms
    return without - predictor.with_depth(measured.depth).predict(measured.counts).total_ms
