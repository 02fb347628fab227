"""Later rounds of one compile search with the allocation strategy the first round's scoring chose."""

from __future__ import annotations

import pytest

from hwprune.search import decide
from tests.golden import golden_problem, recorded_table


def test_the_first_round_scores_every_strategy_and_later_rounds_search_with_its_winner(tmp_path, monkeypatch):
    table, path = recorded_table(tmp_path)
    problem, budget = golden_problem("resnet18", False, table, path)
    first = problem(budget)
    assert {c.strategy for c in first.candidates} == {"sensitivity", "structure", "uniform"}
    assert problem.settled == first.strategy == first.candidates[0].strategy

    scored = []
    monkeypatch.setattr(decide, "choose", lambda *args, **kwargs: scored.append(args) or pytest.fail("scored again"))
    later = problem(budget * 1.03)
    assert not scored and later.candidates == [] and later.strategy == first.strategy
    alone = problem.strategies()[first.strategy](budget * 1.03)  # what that strategy alone decides there
    assert later.search.counts == alone.counts and later.plan.predicted_ms == pytest.approx(alone.predicted_ms)
    assert later.search.predicted_ms > first.search.predicted_ms  # a larger budget: a larger model
