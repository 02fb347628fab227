"""The measured refinement loop: two-sided 5%, widest round that meets, else the nearest."""

import pytest

from hwprune.errors import PlanError
from hwprune.search.refine import Round, meets, pick, refine


def rounds_of(*fractions):
    return [Round(1.0, n, f, None) for n, f in enumerate(fractions)]


def test_meeting_is_two_sided():
    assert meets(0.57, 0.60) and meets(0.63, 0.60) and meets(0.60, 0.60)
    assert not meets(0.565, 0.60) and not meets(0.635, 0.60) and not meets(None, 0.60)


def test_pick_prefers_the_widest_round_that_meets_else_the_nearest():
    assert pick(rounds_of(0.58, 0.62, 0.70), 0.60).fraction == 0.62
    # a round far under the request no longer beats one just over it: nearest wins when none meets
    assert pick(rounds_of(0.45, 0.641), 0.60).fraction == 0.641
    assert pick(rounds_of(None), 0.60).decision == 0


def test_refine_rescales_the_predicted_budget_until_a_round_meets():
    speed = 1.25  # this "machine" runs everything 25% slower than predicted
    budgets = []

    def search(budget):
        budgets.append(budget)
        return budget

    done = refine(search, lambda b: (speed * b / 10.0, None), 0.5, 5.0, rounds=5)
    assert [r.fraction for r in done] == pytest.approx([0.625, 0.5])
    assert budgets == pytest.approx([5.0, 4.0])


def test_refine_bisects_once_rounds_bracket_the_request():
    """Coarse choices (whole layers): a budget below 9 takes three layers away (0.36), one from 9 to 12
    two (0.6), above 12 none (1.04); rescaling alone jumps from 13.7 back below 9, the bracket does not."""
    budgets = []

    def search(budget):
        budgets.append(budget)
        return 0.36 if budget < 9 else 0.6 if budget < 12 else 1.04

    done = refine(search, lambda fraction: (fraction, None), 0.6, 8.2, rounds=3)
    assert [r.fraction for r in done] == [0.36, 1.04, 0.6]
    assert budgets[2] == pytest.approx((8.2 + budgets[1]) / 2)


def test_refine_stops_when_a_later_search_finds_nothing_but_raises_in_the_first():
    def search(budget):
        if budget < 4:
            raise PlanError("budget cannot be met")
        return budget

    done = refine(search, lambda b: (b / 5.0, None), 0.5, 5.0, rounds=3)
    assert [r.fraction for r in done] == [1.0]
    with pytest.raises(PlanError):
        refine(search, lambda b: (b, None), 0.5, 1.0, rounds=3)


def test_unmeasurable_rounds_end_after_one():
    done = refine(lambda b: b, lambda b: (None, "engine script"), 0.5, 5.0, rounds=3)
    assert len(done) == 1 and done[0].realised == "engine script"
