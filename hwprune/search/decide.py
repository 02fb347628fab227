"""One search round: a predicted budget in, a Plan out. The search decides everything a plan holds.

Per round: every allocation strategy proposes counts at the budget (``width``), the most faithful
on the calibration inputs wins (``choose``; or the strategy the user named), and each group's
channels are picked by importance, or, for unconstrained segments, each reader's own
(``readers``). Unconstrained masks cost more than their counts say (producers keep the union,
readers pay copies), so their plan is priced with its copies and re-searched at a scaled budget
until the prediction fits (at most ``UNCONSTRAINED_ROUNDS`` searches). Pricing copies needs the
realised model; the caller passes that as a function, so the search never imports transform.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch

from hwprune.graph.analyze import Analysis
from hwprune.importance.scores import Importance, select
from hwprune.latency.predictor import TablePredictor
from hwprune.plan import Plan, Provenance, WidthDecision
from hwprune.search.choose import Candidate, choose
from hwprune.search.readers import SegmentMask, reader_masks
from hwprune.search.width import SearchResult, search_widths, uniform_widths

STRATEGIES = ("sensitivity", "structure", "uniform")
UNCONSTRAINED_ROUNDS = 4  # searches per round to fit unconstrained masks' real cost into the budget
CHOICE_BATCHES = 8  # calibration batches the allocation strategies are scored on


@dataclass
class Decision:
    """A round's plan and how it was reached."""

    plan: Plan
    search: SearchResult
    strategy: str
    candidates: list[Candidate]  # empty unless the allocation is auto


@dataclass
class WidthSearch:
    """What every round of one compile's width search shares."""

    analysis: Analysis
    predictor: TablePredictor
    importance: Importance
    sensitivity: dict[str, float]
    provenance: Provenance  # copied into every plan; its budget gains the round's predicted budget (ms)
    alignment: int
    min_keep: float
    allocation: str  # "auto" or one of STRATEGIES
    calibration_batches: list[torch.Tensor]
    real_calibration: bool  # from the user's data, not seeded noise
    recalibration_batches: list[torch.Tensor] = field(default_factory=list)  # empty: BN statistics as trained
    # Unconstrained: each segment reader's channel scores, and the predicted time of a plan's copy ops.
    reader_scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    copies_ms: Callable[[Plan], float] | None = None

    def __call__(self, predicted_budget: float) -> Decision:
        strategies = self.strategies()
        candidates = []
        if self.allocation == "auto":
            candidates = choose(self.analysis, self.importance,
                                {name: partial(search, predicted_budget) for name, search in strategies.items()},
                                self.calibration_batches[:CHOICE_BATCHES], self.real_calibration,
                                self.recalibration_batches)
            strategy, result = candidates[0].strategy, candidates[0].search
        else:
            strategy = self.allocation
            result = strategies[strategy](predicted_budget)
        if self.reader_scores:
            result, plan = self._fit_unconstrained(strategies[strategy], predicted_budget, result)
        else:
            plan = self.plan(result, predicted_budget)
        return Decision(plan, result, strategy, candidates)

    def strategies(self) -> dict[str, Callable[[float], SearchResult]]:
        """The allocation strategies, each a search at a predicted budget: weighted by measured group
        sensitivity, by how many layer sides a group sizes, or uniform."""
        def strategy(search: Callable[..., SearchResult], **weights) -> Callable[[float], SearchResult]:
            return lambda budget: search(self.analysis, self.predictor, self.importance, self.alignment, budget,
                                         self.min_keep, **weights)

        return {"sensitivity": strategy(search_widths, weights=self.sensitivity),
                "structure": strategy(search_widths, weights=None),
                "uniform": strategy(uniform_widths)}

    def plan(self, result: SearchResult, predicted_budget: float, masks: dict[str, SegmentMask] | None = None
             ) -> Plan:
        """The plan for a search result: each group's best channels by importance (or, for the groups
        in ``masks``, each reader's own and their union)."""
        masks = masks or {}
        width = {}
        for gid, count in result.counts.items():
            group = self.analysis.group(gid)
            if gid in masks:
                width[gid] = WidthDecision(len(masks[gid].union), group.channels, masks[gid].union, masks[gid].reads)
            else:
                width[gid] = WidthDecision(count, group.channels, select(self.importance.scores[gid], count,
                                                                         group.repeat))
        budget = {**self.provenance.budget, "predicted_budget_ms": predicted_budget}
        provenance = replace(self.provenance, budget=budget)
        return Plan(provenance, result.predicted_ms, result.baseline_predicted_ms, width,
                    bn_recalibration=bool(self.recalibration_batches))

    def _fit_unconstrained(self, search: Callable[[float], SearchResult], predicted_budget: float,
                           result: SearchResult) -> tuple[SearchResult, Plan]:
        search_budget = predicted_budget
        for rounds in range(1, UNCONSTRAINED_ROUNDS + 1):
            masks = reader_masks(self.reader_scores, result.counts)
            plan = self.plan(result, predicted_budget, masks)
            keep = {**result.counts, **{gid: len(mask.union) for gid, mask in masks.items()}}
            predicted = (self.predictor.predict(keep, {gid: result.counts[gid] for gid in masks}).total_ms
                         + self.copies_ms(plan))
            result = replace(result, predicted_ms=predicted)
            plan.predicted_ms = predicted
            if predicted <= predicted_budget or rounds == UNCONSTRAINED_ROUNDS:
                break
            search_budget *= predicted_budget / predicted
            result = search(search_budget)
        return result, plan

