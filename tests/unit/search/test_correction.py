"""The per-option correction: measured rounds teach the search what one depth option really saves, and the
refinement loop still converges where the predictor is wrong on that option."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from hwprune.cost.correction import Correction
from hwprune.search.learn import Learner, MeasuredRound, fit
from hwprune.search.refine import Refinement, refine

PREDICTED = {"drop:a": 0.30, "drop:b": 0.15}  # what the table says each option saves (fractions of the baseline)
TRUE = {"drop:a": 0.0, "drop:b": 0.15}  # what they save: the table is wrong on drop:a alone
COST = {"drop:a": 0.05, "drop:b": 0.05}  # the accuracy an option costs (the search's value)


@dataclass(frozen=True)
class FakePredictor:
    """A model of 100 width steps (0.8 of its time, linear) and two droppable blocks, priced like
    ``TablePredictor``: ``with_depth(...).predict(counts).total_ms``, ``corrected``."""

    correction: Correction = Correction()
    depth: frozenset[str] = frozenset()

    def with_depth(self, depth: frozenset[str]) -> FakePredictor:
        return FakePredictor(self.correction, depth)

    def predict(self, counts: dict[str, int]) -> SimpleNamespace:
        total = 0.2 + 0.8 * counts.get("w", 100) / 100 - sum(PREDICTED[k] for k in self.depth)
        return SimpleNamespace(total_ms=total + sum(self.correction.options_ms.get(k, 0.0) for k in self.depth))

    def corrected(self, correction: Correction) -> FakePredictor:
        return FakePredictor(correction)

    def option_ms(self, depth: frozenset[str]) -> float:
        return sum(self.correction.options_ms.get(k, 0.0) for k in depth)


def measure(decision: SimpleNamespace) -> float:
    return 0.2 + 0.8 * decision.search.counts["w"] / 100 - sum(TRUE[k] for k in decision.search.depth)


@dataclass
class FakeProblem:
    """The best width and blocks under the budget by the current predictor: log(width kept) - the blocks' cost;
    decisions shaped like ``search.decide.Decision`` (``.search.counts``, ``.search.depth``)."""

    predictor: FakePredictor

    def __call__(self, budget: float, hold: frozenset[str] | None) -> SimpleNamespace:
        best = None
        for depth in ([hold] if hold is not None else [frozenset(), *(frozenset({k}) for k in PREDICTED),
                                                         frozenset(PREDICTED)]):
            view = self.predictor.with_depth(depth)
            fits = [n for n in range(10, 101) if view.predict({"w": n}).total_ms <= budget]
            if fits:
                value = math.log(max(fits) / 100) - sum(COST[k] for k in depth)
                if best is None or value > best[0]:
                    best = (value, SimpleNamespace(search=SimpleNamespace(counts={"w": max(fits)}, depth=depth)))
        return best[1]


def run(requested: float, learning: bool):
    problem = FakeProblem(FakePredictor())
    done = refine(problem, lambda d: (measure(d), d), requested, requested, Refinement(rounds=8),
                  structure=lambda d: d.search.depth, learn=Learner(problem, FakePredictor()) if learning else None)
    return [SimpleNamespace(fraction=r.fraction, held=r.held, counts=r.decision.search.counts,
                            depth=r.decision.search.depth) for r in done], problem.predictor


@pytest.mark.parametrize("requested", [0.5, 0.6, 0.7])
def test_the_loop_converges_in_fewer_rounds_when_it_learns_the_option_the_predictor_is_wrong_on(requested):
    """The table makes drop:a the first choice; measured, it saves nothing. Rescaling alone converges by cutting
    widths round after round; with the correction the next round already prices drop:a near its measured worth."""
    learned, _ = run(requested, learning=True)
    plain, _ = run(requested, learning=False)
    assert "drop:a" in learned[0].depth
    assert abs(learned[-1].fraction - requested) <= 0.02 * requested and len(learned) <= 3
    assert len(learned) < len(plain)


def test_a_round_that_tells_the_options_apart_lays_the_error_on_the_one_that_is_wrong():
    """At 0.7 the first round drops drop:a alone: its whole error is drop:a's, and drop:a is no longer taken;
    without the correction every round keeps it and pays its accuracy for nothing."""
    learned, predictor = run(0.7, learning=True)
    plain, _ = run(0.7, learning=False)
    assert learned[0].depth == {"drop:a"} and "drop:a" not in learned[-1].depth
    assert predictor.correction.options_ms == {"drop:a": pytest.approx(PREDICTED["drop:a"])}
    assert all("drop:a" in r.depth for r in plain)

    def value(r) -> float:  # the search's objective, on what was measured
        return math.log(r.counts["w"] / 100) - sum(COST[k] for k in r.depth)

    assert value(learned[-1]) > value(plain[-1])


def test_the_fit_lays_a_round_error_on_its_depth_options_and_rounds_without_them_tell_them_apart():
    base = FakePredictor()
    both = MeasuredRound({"w": 50}, frozenset(PREDICTED), 0.2 + 0.4 - 0.15)  # drop:a saved nothing
    alone = MeasuredRound({"w": 50}, frozenset({"drop:b"}), 0.2 + 0.4 - 0.15)
    assert fit(base, [MeasuredRound({"w": 50}, frozenset(), 0.62)]) == Correction(rounds=1)  # widths: none
    taught = fit(base, [both, alone]).options_ms
    assert taught["drop:a"] == pytest.approx(0.30) and abs(taught.get("drop:b", 0.0)) < 1e-9


def test_a_corrected_table_predictor_adds_an_option_s_milliseconds_wherever_the_option_is_taken():
    import torch

    from hwprune.cost.model_latency import analytic_predictor
    from hwprune.graph.analyze import analyze
    from hwprune.importance.scores import score_groups
    from hwprune.search.joint import search_joint
    from hwprune.targets import load_target
    from tests.data.small_models import small_resnet

    model, x = small_resnet()
    analysis = analyze(model, x, "small_resnet")
    target = load_target("cpu")
    predictor = analytic_predictor(analysis, target)
    drop = next(k for k, o in predictor.options.items() if o.kind == "drop")
    corrected = predictor.corrected(Correction({drop: 0.5}, 2))
    narrow = {g.id: g.channels // 2 for g in analysis.prunable()}
    for keep in ({}, narrow):
        with_drop = predictor.with_depth(frozenset({drop})).predict(keep).total_ms
        assert corrected.with_depth(frozenset({drop})).predict(keep).total_ms == pytest.approx(with_drop + 0.5)
        assert corrected.predict(keep).total_ms == predictor.predict(keep).total_ms
    # the joint search prices options with it: an option that saves nothing once corrected is never taken
    importance = score_groups(analysis, "l1", [torch.randn(2, *x.shape[1:])])
    costs = {key: 0.0 for key in predictor.options}  # free in accuracy: only latency decides
    budget = 0.7 * predictor.predict({}).total_ms
    assert search_joint(analysis, predictor, importance, target.channel_alignment, budget, 0.1, None, costs).depth
    useless = predictor.corrected(Correction({k: 1e3 for k in predictor.options}, 2))
    assert not search_joint(analysis, useless, importance, target.channel_alignment, budget, 0.1, None, costs).depth
