"""One search round: a predicted budget in, a Plan out (``SearchProblem``). The search decides everything a plan holds.

In the first round every allocation strategy proposes counts at the budget (``width``) and the most
faithful on the calibration inputs wins (``choose``; or the strategy the user named); later rounds of
the same compile search with the winner alone (scoring is most of a round's search time). Each group's
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
from torch import nn

from hwprune.cost.predictor import TablePredictor
from hwprune.graph.analyze import Analysis
from hwprune.importance.scores import Importance, select
from hwprune.plan import DroppedBlock, MergedSpan, Plan, Provenance, Sparsity, WidthDecision
from hwprune.search.choose import Candidate, choose
from hwprune.search.joint import search_joint
from hwprune.search.permutations import Permutations, nm_entries
from hwprune.search.readers import SegmentMask, reader_masks
from hwprune.search.runs import as_runs
from hwprune.search.width import SearchResult, search_widths, uniform_widths

STRATEGIES = ("sensitivity", "structure", "uniform")
SEARCHES = ("width", "depth", "joint")
UNCONSTRAINED_ROUNDS = 4  # searches per round to fit unconstrained masks' real cost into the budget
CHOICE_BATCHES = 8  # calibration batches the allocation strategies are scored on


@dataclass
class Decision:
    """A round's plan and how it was reached."""

    plan: Plan
    search: SearchResult
    strategy: str
    candidates: list[Candidate]  # empty unless the allocation is auto


@dataclass(frozen=True)
class Scores:
    """What the score stage measured for the search to weigh."""

    importance: Importance  # per channel group, each unit's score
    sensitivity: dict[str, float] = field(default_factory=dict)  # per group, the output change of halving it
    # Per depth option (merged span, dropped block, N:M layer), its measured output change.
    depth_costs: dict[str, float] = field(default_factory=dict)
    # Per stack layer (transformers), its block influence, reported beside its cost.
    influence: dict[str, float] = field(default_factory=dict)
    # Unconstrained pruning: per segment, each reader's channel scores.
    reader_scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchSettings:
    """How the search may decide: what (width, depth or both), how it shares the budget among groups, the
    runtime's channel alignment and the least fraction of a group kept."""

    kind: str = "width"  # one of SEARCHES
    allocation: str = "auto"  # "auto" or one of STRATEGIES
    alignment: int = 1
    min_keep: float = 0.1


@dataclass(frozen=True)
class CalibrationBatches:
    """The inputs candidates are judged on, and the ones BatchNorm is re-estimated on (none: as trained)."""

    batches: list[torch.Tensor]
    real: bool  # from the user's data, not seeded noise
    recalibration: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class Realisation:
    """What the search needs of the transform, passed in (the search never imports it): the predicted time
    of an unconstrained plan's copy ops, the model with a plan's depth decisions taken (to judge it), and
    the N:M channel permutations (None: no N:M)."""

    copies_ms: Callable[[Plan], float] | None = None
    depth_view: Callable[[nn.Module, Plan], nn.Module] | None = None
    permutations: Permutations | None = None


def structure(decision: Decision) -> frozenset[str]:
    """What a decision drops, merges or sparsifies (its depth options): the refinement loop holds it once
    rounds bracket the request with two structures."""
    return decision.search.depth


@dataclass
class SearchProblem:
    """What to decide for one model on one target: which channels, heads, spans, blocks, layers and N:M
    layers to keep, merge, drop or sparsify under a predicted budget; every round of a compile shares it."""

    analysis: Analysis
    predictor: TablePredictor
    scores: Scores
    settings: SearchSettings
    provenance: Provenance  # copied into every plan; its budget gains the round's predicted budget (ms)
    calibration: CalibrationBatches
    realisation: Realisation = field(default_factory=Realisation)
    # The strategy the first scored round chose (``--allocation auto``): later rounds move the budget by a
    # few percent, so they search with it alone instead of scoring every strategy again.
    settled: str | None = None

    def __call__(self, predicted_budget: float, hold: frozenset[str] | None = None) -> Decision:
        """The decision at ``predicted_budget``; ``hold``: keep these depth options (a measured round's
        structure, :func:`structure`) and move only the widths, with the joint search."""
        strategies = self.strategies(hold)
        candidates = []
        if self.settings.allocation == "auto" and len(strategies) > 1 and self.settled not in strategies:
            candidates = choose(self.analysis, self.scores.importance,
                                {name: partial(search, predicted_budget) for name, search in strategies.items()},
                                self.calibration.batches[:CHOICE_BATCHES], self.calibration.real,
                                self.calibration.recalibration, self._depth_view)
            strategy, result = candidates[0].strategy, candidates[0].search
            self.settled = strategy
        else:  # a named allocation, the one scoring chose before, or the one strategy there is
            named = self.settled if self.settings.allocation == "auto" else self.settings.allocation
            strategy = named if named in strategies else next(iter(strategies))
            result = strategies[strategy](predicted_budget)
        if self.scores.reader_scores:
            result, plan = self._fit_unconstrained(strategies[strategy], predicted_budget, result)
        else:
            plan = self.plan(result, predicted_budget)
        return Decision(plan, result, strategy, candidates)

    def strategies(self, hold: frozenset[str] | None = None) -> dict[str, Callable[[float], SearchResult]]:
        """The allocation strategies, each a search at a predicted budget: weighted by measured group
        sensitivity, by how many layer sides a group sizes, or uniform (width); the joint search of
        width and depth, weighted by sensitivity; depth alone, every group whole. ``--search width``
        offers the first three, ``joint`` all four, ``depth`` the last; with a structure to ``hold``, the joint
        search alone, its depth options held."""
        def strategy(search: Callable[..., SearchResult], **weights) -> Callable[[float], SearchResult]:
            return lambda budget: search(self.analysis, self.predictor, self.scores.importance,
                                         self.settings.alignment, budget, self.settings.min_keep, **weights)

        width = {"sensitivity": strategy(search_widths, weights=self.scores.sensitivity),
                 "structure": strategy(search_widths, weights=None),
                 "uniform": strategy(uniform_widths)}
        costs = self.scores.depth_costs
        joint = {"joint": strategy(search_joint, weights=self.scores.sensitivity or None, costs=costs, fixed=hold)}
        if hold is not None:
            return joint
        depth = {"depth": strategy(search_joint, weights=None, costs=self.scores.depth_costs, widths=False)}
        if self.settings.kind == "depth":
            return depth
        if self.settings.kind == "joint" and self.scores.depth_costs:
            return {**width, **joint} if self.settings.allocation == "auto" else joint
        return width

    def _depth_view(self, model: nn.Module, result: SearchResult) -> nn.Module:
        view = self.realisation.depth_view
        return view(model, self.depth_plan(result)) if result.depth and view else model

    def depth_plan(self, result: SearchResult) -> Plan:
        """A plan holding only ``result``'s depth decisions (for the depth view)."""
        merge, depth = self._depth_entries(result.depth)
        return Plan(self.provenance, result.predicted_ms, result.baseline_predicted_ms, merge=merge, depth=depth,
                    sparsity=Sparsity(layers=nm_entries(self._sparse(result.depth))))

    def _depth_entries(self, keys: frozenset[str]) -> tuple[tuple[MergedSpan, ...], tuple[DroppedBlock, ...]]:
        options = [self.predictor.options[k] for k in sorted(keys)]
        return (tuple(o.choice for o in options if o.kind == "merge"),
                as_runs([o.choice for o in options if o.kind in ("drop", "replace")]))

    def _sparse(self, keys: frozenset[str]) -> list:
        return [self.predictor.options[k] for k in sorted(keys) if self.predictor.options[k].kind == "sparse"]

    def plan(self, result: SearchResult, predicted_budget: float, masks: dict[str, SegmentMask] | None = None
             ) -> Plan:
        """The plan for a search result: each group's best channels by importance (or, for the groups
        in ``masks``, each reader's own and their union)."""
        masks = masks or {}
        width: dict[str, WidthDecision] = {}
        for gid, count in result.counts.items():
            group = self.analysis.group(gid)
            if gid in masks:
                width[gid] = WidthDecision(len(masks[gid].union), group.channels, masks[gid].union, masks[gid].reads)
            else:
                width[gid] = WidthDecision(count, group.channels, select(self.scores.importance.scores[gid], count,
                                                                         group.repeat))
        provenance = replace(self.provenance, budget=replace(self.provenance.budget,
                                                             predicted_budget_ms=predicted_budget))
        merge, depth = self._depth_entries(result.depth)
        sparse = self._sparse(result.depth)
        # None: masks without permutation
        permutations = self.realisation.permutations or Permutations(lambda gid: False)
        sparsity = permutations.section(self.analysis, self.predictor.layers, sparse, width)
        heads = {gid: d for gid, d in width.items() if self.analysis.group(gid).kind == "heads"}
        channels = {gid: d for gid, d in width.items() if gid not in heads}
        return Plan(provenance, result.predicted_ms, result.baseline_predicted_ms, channels, heads, merge, depth,
                    sparsity, bn_recalibration=bool(self.calibration.recalibration))

    def _fit_unconstrained(self, search: Callable[[float], SearchResult], predicted_budget: float,
                           result: SearchResult) -> tuple[SearchResult, Plan]:
        search_budget = predicted_budget
        for rounds in range(1, UNCONSTRAINED_ROUNDS + 1):
            masks = reader_masks(self.scores.reader_scores, result.counts)
            plan = self.plan(result, predicted_budget, masks)
            keep = {**result.counts, **{gid: len(mask.union) for gid, mask in masks.items()}}
            predicted = (self.predictor.predict(keep, {gid: result.counts[gid] for gid in masks}).total_ms
                         + self.realisation.copies_ms(plan))
            result = replace(result, predicted_ms=predicted)
            plan = replace(plan, predicted_ms=predicted)
            if predicted <= predicted_budget or rounds == UNCONSTRAINED_ROUNDS:
                break
            search_budget *= predicted_budget / predicted
            result = search(search_budget)
        return result, plan

