"""The search's first-round plans for three models, constrained and unconstrained, are the recorded ones."""

import pytest

from tests.golden import MODELS, first_round_plan, golden_path, plan_text, recorded_table


@pytest.mark.parametrize("unconstrained", [False, True], ids=["constrained", "unconstrained"])
@pytest.mark.parametrize("name", MODELS)
def test_first_round_plan_is_the_golden_one(name, unconstrained, tmp_path):
    table, scratch = recorded_table(tmp_path)
    plan = first_round_plan(name, unconstrained, table, scratch)
    assert not scratch.exists(), "the recorded table lacked a measurement: the plan would depend on timing now"
    assert plan_text(plan) == golden_path(name, unconstrained).read_text()
