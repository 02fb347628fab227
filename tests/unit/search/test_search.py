"""Width search: the knapsack against brute force, budgets respected, infeasible budgets, plans."""

import itertools
import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hwprune.cost.layers import model_layers
from hwprune.cost.lut import new_table
from hwprune.cost.predictor import TablePredictor
from hwprune.cost.space import profile_signatures
from hwprune.errors import PlanError
from hwprune.evaluate.calibration import fidelity
from hwprune.graph.analyze import analyze
from hwprune.importance.scores import score_groups, select
from hwprune.plan import load_plan, save_plan
from hwprune.runtime.timing import Timing
from hwprune.search import knapsack
from hwprune.search.choose import choose
from hwprune.search.width import allowed_counts, search_widths, uniform_widths
from hwprune.transform.realise import apply_plan
from tests import DATA
from tests.pruning_helpers import width_plan

sys.path.insert(0, str(DATA))
from small_models import small_resnet  # noqa: E402

ALIGNMENT = 16


@st.composite
def knapsack_instances(draw):
    classes = draw(st.integers(1, 4))
    values = [draw(st.lists(st.floats(-5, 5), min_size=1, max_size=4)) for _ in range(classes)]
    costs = [draw(st.lists(st.integers(0, 10), min_size=len(v), max_size=len(v))) for v in values]
    return values, costs, draw(st.integers(0, 30))


@settings(max_examples=200, deadline=None)
@given(knapsack_instances())
def test_knapsack_matches_brute_force(instance):
    values, costs, budget = instance
    feasible = [combo for combo in itertools.product(*(range(len(v)) for v in values))
                if sum(c[i] for c, i in zip(costs, combo, strict=True)) <= budget]
    picks = knapsack.solve(values, costs, budget, step=1)
    if not feasible:
        assert picks is None
        return
    best = max(sum(v[i] for v, i in zip(values, combo, strict=True)) for combo in feasible)
    assert picks is not None
    assert sum(c[i] for c, i in zip(costs, picks, strict=True)) <= budget
    assert sum(v[i] for v, i in zip(values, picks, strict=True)) == pytest.approx(best)


@settings(max_examples=100, deadline=None)
@given(knapsack_instances(), st.floats(0.05, 3))
def test_knapsack_never_exceeds_the_budget_on_a_coarse_grid(instance, step):
    values, costs, budget = instance
    picks = knapsack.solve(values, [[c * 0.37 for c in cs] for cs in costs], budget * 0.37, step)
    if picks is not None:
        assert sum(c[i] * 0.37 for c, i in zip(costs, picks, strict=True)) <= budget * 0.37 + 1e-9


def synthetic_predictor(analysis):
    """A table whose op times follow a FLOPs roofline plus a fixed cost: deterministic, no timing."""
    layers = model_layers(analysis)
    table = new_table({"target": "test"}, {})
    for sig in profile_signatures(layers, {g.id: g for g in analysis.groups}, ALIGNMENT):
        ms = 0.001 + sig.flops() / 2e9 * (1 + (-sig.c_out) % ALIGNMENT / ALIGNMENT)
        table.put(sig, Timing(ms, ms, ms, 0.0, 10))
    return TablePredictor(layers, table)


@pytest.fixture
def setup():
    model, x = small_resnet()
    analysis = analyze(model, x, "small_resnet")
    return analysis, synthetic_predictor(analysis), score_groups(analysis, "l1")


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7, 0.9])
def test_every_solution_meets_the_budget_in_prediction(setup, fraction):
    analysis, predictor, importance = setup
    budget = fraction * predictor.predict({}).total_ms
    result = search_widths(analysis, predictor, importance, ALIGNMENT, budget)
    assert predictor.predict(result.counts).total_ms <= budget + 1e-9
    assert result.predicted_ms == pytest.approx(predictor.predict(result.counts).total_ms)
    options = allowed_counts(analysis, ALIGNMENT, 0.1)
    assert all(result.counts[gid] in options[gid] for gid in options)


def test_larger_budgets_keep_at_least_as_much(setup):
    analysis, predictor, importance = setup
    full = predictor.predict({}).total_ms
    objectives = [search_widths(analysis, predictor, importance, ALIGNMENT, f * full).objective
                  for f in (0.4, 0.6, 0.8, 1.0)]
    assert objectives == sorted(objectives) and objectives[-1] == pytest.approx(0.0)


def test_search_agrees_with_exhaustive_search_on_a_small_space(setup):
    analysis, predictor, importance = setup
    options = allowed_counts(analysis, ALIGNMENT, 0.1)
    budget = 0.55 * predictor.predict({}).total_ms
    result = search_widths(analysis, predictor, importance, ALIGNMENT, budget)
    from hwprune.importance.scores import retained

    sides = predictor.layer_sides()

    def objective(counts):
        total = 0.0
        for gid, n in counts.items():
            cumulative = retained(importance.scores[gid])
            total += sides[gid] * math.log(cumulative[n] / cumulative[-1])
        return total

    ids = list(options)
    best = max(objective(dict(zip(ids, combo, strict=True))) for combo in itertools.product(*(options[g] for g in ids))
               if predictor.predict(dict(zip(ids, combo, strict=True))).total_ms <= budget)
    # Linearised knapsack plus greedy repair: optimal here, and never better than the true optimum.
    assert result.objective == pytest.approx(best)


@pytest.mark.parametrize("fraction", [0.4, 0.6, 0.8])
def test_uniform_allocation_meets_the_budget_and_keeps_every_group_near_one_fraction(setup, fraction):
    analysis, predictor, importance = setup
    budget = fraction * predictor.predict({}).total_ms
    result = uniform_widths(analysis, predictor, importance, ALIGNMENT, budget)
    assert result.predicted_ms <= budget + 1e-9
    options = allowed_counts(analysis, ALIGNMENT, 0.1)
    kept = [result.counts[gid] / options[gid][-1] for gid in options]
    assert all(result.counts[gid] in options[gid] for gid in options)
    # One shared fraction, each group rounded down to its aligned steps, then slack filled: no two
    # groups further apart than the fill could add (one step each) plus one alignment step.
    steps = [ALIGNMENT / options[gid][-1] for gid in options]
    assert max(kept) - min(kept) <= 2 * max(steps) + 1e-9


def test_choice_scores_masked_models_as_their_pruned_counterparts_and_puts_the_best_first(setup):
    analysis, predictor, importance = setup
    budget = 0.5 * predictor.predict({}).total_ms
    args = (analysis, predictor, importance, ALIGNMENT, budget)
    batches = [torch.randn(4, *analysis.capture.example_input.shape[1:], generator=torch.Generator().manual_seed(s))
               for s in range(2)]
    original = {k: v.clone() for k, v in analysis.model.state_dict().items()}
    candidates = choose(analysis, importance, {"structure": lambda: search_widths(*args),
                                               "uniform": lambda: uniform_widths(*args)}, batches, False)
    assert [c.score for c in candidates] == sorted((c.score for c in candidates), reverse=True)
    assert {c.strategy for c in candidates} == {"structure", "uniform"}
    assert all(torch.equal(v, original[k]) for k, v in analysis.model.state_dict().items())  # masks undone
    for candidate in candidates:
        plan = width_plan(analysis, predictor, importance, candidate.search)
        model, x = small_resnet()
        pruned = apply_plan(plan, analyze(model, x, "small_resnet"))
        physical = fidelity(small_resnet()[0].eval(), pruned.eval(), batches)
        assert physical.cosine == pytest.approx(candidate.quality.cosine, abs=1e-6)


def test_infeasible_budget_names_the_smallest_latency(setup):
    analysis, predictor, importance = setup
    with pytest.raises(PlanError, match=r"smallest model this search allows is predicted at [0-9.]+ ms"):
        search_widths(analysis, predictor, importance, ALIGNMENT, 1e-6)


def test_plan_round_trips_and_reapplies_to_the_same_model(setup, tmp_path):
    analysis, predictor, importance = setup
    result = search_widths(analysis, predictor, importance, ALIGNMENT, 0.5 * predictor.predict({}).total_ms)
    plan = width_plan(analysis, predictor, importance, result)
    save_plan(plan, tmp_path / "plan.json")
    loaded = load_plan(tmp_path / "plan.json")
    assert loaded == plan
    pruned = []
    for _ in range(2):
        model, x = small_resnet()
        pruned.append(apply_plan(loaded, analyze(model, x, "small_resnet")))
    first, second = (m.state_dict() for m in pruned)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert sum(p.numel() for p in pruned[0].parameters()) < sum(p.numel() for p in small_resnet()[0].parameters())
    for gid, decision in plan.width.items():
        assert list(decision.indices) == select(importance.scores[gid], decision.keep)


def test_malformed_plan_is_a_plan_error(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"format": "hwprune-plan/1", "groups": {}}')
    with pytest.raises(PlanError, match="malformed plan"):
        load_plan(path)
    path.write_text('{"format": "hwprune-plan/2", "provenance": {}, "width": {}}')
    with pytest.raises(PlanError, match="malformed plan"):
        load_plan(path)
    path.write_text('{"format": "hwprune-plan/3", "provenance": {}, "width": {}}')
    with pytest.raises(PlanError, match="malformed plan"):
        load_plan(path)
    path.write_text('{"format": "hwprune-plan/9"}')
    with pytest.raises(PlanError, match="not a hwprune-plan/3 plan"):
        load_plan(path)
    path.write_text("not json")
    with pytest.raises(PlanError, match="corrupt plan, not JSON"):
        load_plan(path)


def test_readers_narrower_than_their_producers_are_predicted_between_the_two_widths(setup):
    analysis, predictor, _importance = setup
    residual = next(g for g in analysis.prunable() if g.kind == "residual")
    wide, narrow = residual.channels, residual.channels // 2
    both_wide = predictor.predict({residual.id: wide}).total_ms
    unconstrained = predictor.predict({residual.id: wide}, reads={residual.id: narrow}).total_ms
    both_narrow = predictor.predict({residual.id: narrow}).total_ms
    assert both_narrow < unconstrained < both_wide
    readers = [layer for layer in predictor.layers if any(g.group == residual.id for g in layer.inputs)]
    assert readers and all(predictor.channels(layer, {residual.id: wide}, {residual.id: narrow})[0]
                           == layer.signature.c_in - (wide - narrow) for layer in readers)


def test_activation_importance_sees_a_channel_whose_activations_are_zero():
    model, x = small_resnet()
    analysis = analyze(model, x, "small_resnet")
    residual = next(g for g in analysis.prunable() if g.kind == "residual")
    stem_bn = analysis.model[1]  # the stem's BatchNorm writes the residual stream's channels
    with torch.no_grad():  # channel 5 of the stream: zero at the stem, its weights left large
        stem_bn.weight[5], stem_bn.bias[5] = 0.0, 0.0
    batches = [torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    by_activation = score_groups(analysis, "activation", batches)
    by_weight = score_groups(analysis, "l1")
    assert residual.id not in by_activation.fallbacks
    # The blocks add to channel 5 further on, so it is not zero everywhere: the weakest, not nothing.
    assert int(by_activation.scores[residual.id].argmin()) == 5
    assert int(by_weight.scores[residual.id].argmin()) != 5
    assert all(s.shape == (analysis.group(gid).channels,) for gid, s in by_activation.scores.items())
