"""What measured rounds teach the predictor about single depth options: a per-option correction (fitted by
``search.learn``, applied by ``TablePredictor.corrected``).

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
adds ``a_k x_k`` whenever k is taken (``TablePredictor.corrected``); the budget's rescaling then works on
the rounds' budgets moved by what the correction changed in their predictions (``search.learn``), so it
fixes only what the correction does not explain (a round without depth options, an error beyond the clip).

Widths are not corrected per group: a width search moves every group a little each round, so with R
rounds and a hundred groups a fit would explain R noisy measurements exactly and call the noise a
correction; a smooth error over the widths is what the rescaling fixes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Correction:
    """Per depth option, the milliseconds added to a prediction that takes it."""

    options_ms: dict[str, float] = field(default_factory=dict)
    rounds: int = 0  # the measured rounds it was fitted on

    def __bool__(self) -> bool:
        return bool(self.options_ms)
