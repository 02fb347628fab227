"""The search's first-round plans for three models, constrained and unconstrained, are the recorded ones."""

import pytest

from hwprune.plan import load_plan
from tests.golden import MODELS, first_round_plan, golden_path, plan_text, recorded_table


@pytest.mark.parametrize("unconstrained", [False, True], ids=["constrained", "unconstrained"])
@pytest.mark.parametrize("name", MODELS)
def test_first_round_plan_is_the_golden_one(name, unconstrained, tmp_path):
    table, scratch = recorded_table(tmp_path)
    plan = first_round_plan(name, unconstrained, table, scratch)
    assert not scratch.exists(), "the recorded table lacked a measurement: the plan would depend on timing now"
    assert plan_text(plan) == golden_path(name, unconstrained).read_text()


@pytest.mark.parametrize("unconstrained", [False, True], ids=["constrained", "unconstrained"])
@pytest.mark.parametrize("name", MODELS)
def test_the_v1_plan_of_the_code_before_loads_as_the_same_decision(name, unconstrained):
    """The plans the code wrote before ``hwprune-plan/2`` (converted on read) decide exactly what the
    current golden plans decide: every index, reader and prediction."""
    old, new = load_plan(golden_path(name, unconstrained, "v1")), load_plan(golden_path(name, unconstrained))
    assert old.width == new.width
    assert (old.predicted_ms, old.baseline_predicted_ms) == (new.predicted_ms, new.baseline_predicted_ms)
    assert old.provenance.latency_model == new.provenance.latency_model
    assert old.provenance.model == new.provenance.model and old.provenance.input_shape == new.provenance.input_shape
    assert old.provenance.state_sha256 is None and new.provenance.state_sha256 is not None
