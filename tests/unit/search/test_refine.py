"""The measured refinement loop: aim inside +-2% of the request, choose the nearest round, budget rounds by time,
bracket, and hold a structure once two structures bracket the request."""

import pytest

from hwprune.errors import PlanError
from hwprune.search.refine import Refinement, Round, pick, refine


def rounds_of(*fractions):
    return [Round(1.0, n, f, None) for n, f in enumerate(fractions)]


def test_pick_chooses_the_round_nearest_the_request():
    assert pick(rounds_of(0.58, 0.62, 0.70), 0.60).fraction == 0.58  # not the widest inside the band
    assert pick(rounds_of(0.45, 0.641), 0.60).fraction == 0.641
    assert pick(rounds_of(None), 0.60).decision == 0


def test_refine_goes_on_inside_the_band_until_inside_the_inner_band():
    """0.62 of a 0.60 request is inside +-5% but not +-2%: another round; 0.605 is close enough."""
    seen = iter([0.62, 0.605, 0.6])
    done = refine(lambda b, hold: b, lambda b: (next(seen), None), 0.6, 6.0, Refinement(rounds=5))
    assert [r.fraction for r in done] == [0.62, 0.605]


def test_refine_rescales_the_predicted_budget_until_close():
    speed = 1.25  # this "machine" runs everything 25% slower than predicted
    budgets = []

    def search(budget, hold):
        budgets.append(budget)
        return budget

    done = refine(search, lambda b: (speed * b / 10.0, None), 0.5, 5.0, Refinement(rounds=5))
    assert [r.fraction for r in done] == pytest.approx([0.625, 0.5])
    assert budgets == pytest.approx([5.0, 4.0])


def test_rounds_are_budgeted_by_time_not_only_by_count():
    """Rounds of 4 s after a first of 10 s: within 20 s of the first round's end, five more fit; the next,
    expected to end at 24 s, does not start."""
    now = [0.0]

    def clock():
        return now[0]

    def search(budget, hold):
        now[0] += 10.0 if not calls else 4.0
        calls.append(budget)
        return budget

    calls = []
    done = refine(search, lambda b: (0.9, None), 0.5, 5.0, Refinement(rounds=50, seconds=20.0), clock=clock)
    assert len(done) == 6 and [r.seconds for r in done] == [10.0] + [4.0] * 5


@pytest.mark.parametrize(("first", "rounds"), [(0.9, 2), (0.52, 1)], ids=["missed", "inside-the-band"])
def test_a_first_round_outside_the_band_is_corrected_whatever_its_time(first, rounds):
    """Rounds of 100 s against 20 s for the rest: a first round measured outside the band (+-5% of 0.5) gets one
    correction; one inside the band but off the inner aim (0.52) does not."""
    now = [0.0]

    def search(budget, hold):
        now[0] += 100.0
        return budget

    fractions = iter([first, 0.7, 0.6])
    done = refine(search, lambda b: (next(fractions), None), 0.5, 5.0, Refinement(rounds=10, seconds=20.0),
                  clock=lambda: now[0])
    assert len(done) == rounds


def test_refine_bisects_once_rounds_bracket_the_request():
    """Coarse choices (whole layers): a budget below 9 takes three layers away (0.36), one from 9 to 12
    two (0.6), above 12 none (1.04); rescaling alone jumps from 13.7 back below 9, the bracket does not."""
    budgets = []

    def search(budget, hold):
        budgets.append(budget)
        return 0.36 if budget < 9 else 0.6 if budget < 12 else 1.04

    done = refine(search, lambda fraction: (fraction, None), 0.6, 8.2, Refinement(rounds=3))
    assert [r.fraction for r in done] == [0.36, 1.04, 0.6]
    assert budgets[2] == pytest.approx(8.2 + (budgets[1] - 8.2) * (0.6 - 0.36) / (1.04 - 0.36))


def test_once_two_structures_bracket_the_request_the_nearest_is_held_and_widths_converge():
    """A model of two structures: dropping a block (structure "drop") takes 0.3 off at any width, keeping it
    none; widths scale the rest linearly with the predicted budget. The search drops the block below a budget
    of 6, so rescaling alone jumps between structures (0.25, then 1.1); the loop holds the structure measured
    nearer the request and moves the widths alone, interpolating, until inside +-2%."""
    def search(budget, hold):
        drop = hold == "drop" if hold is not None else budget < 6.0
        return ("drop" if drop else "keep", budget)

    def realise(decision):
        kind, budget = decision
        return budget / 10.0 - (0.3 if kind == "drop" else 0.0), None

    holds = []

    def searching(budget, hold):
        holds.append(hold)
        return search(budget, hold)

    done = refine(searching, realise, 0.5, 5.5, Refinement(rounds=10), structure=lambda d: d[0])
    assert holds[:2] == [None, None] and holds[2] == "drop"  # 0.25 (drop) and 1.1 (keep): drop is nearer
    assert all(r.held and r.decision[0] == "drop" for r in done[2:])
    assert abs(done[-1].fraction - 0.5) <= 0.02 * 0.5 and len(done) <= 5


def test_refine_stops_when_a_later_search_finds_nothing_but_raises_in_the_first():
    def search(budget, hold):
        if budget < 4:
            raise PlanError("budget cannot be met")
        return budget

    done = refine(search, lambda b: (b / 5.0, None), 0.5, 5.0, Refinement(rounds=3))
    assert [r.fraction for r in done] == [1.0]
    with pytest.raises(PlanError):
        refine(search, lambda b: (b, None), 0.5, 1.0, Refinement(rounds=3))


def test_unmeasurable_rounds_end_after_one():
    done = refine(lambda b, hold: b, lambda b: (None, "engine script"), 0.5, 5.0, Refinement(rounds=3))
    assert len(done) == 1 and done[0].realised == "engine script"


def test_only_the_round_pick_will_choose_keeps_its_model_in_memory():
    """A large model's rounds must not hold a pruned copy each: the round nearest the request so far keeps
    its model, and it is the one ``pick`` chooses."""
    from hwprune.pipeline.compile import _keep_only_the_pick
    from hwprune.pipeline.measure import Realised

    rounds = [Round(1.0, n, f, Realised(object(), None, None)) for n, f in enumerate((0.66, 0.59, 0.61, 0.58))]
    for done in range(1, len(rounds) + 1):
        _keep_only_the_pick(rounds[:done], 0.60)
    kept = [r.decision for r in rounds if r.realised.model is not None]
    assert kept == [pick(rounds, 0.60).decision] == [1]  # 0.59 and 0.61 tie: the earlier, as pick
