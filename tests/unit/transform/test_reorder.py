"""Channel reordering of shared segments: fewer contiguous runs per reader means slices instead of gathers."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwprune.transform.reorder import channel_order, runs, total_runs


@st.composite
def instances(draw, max_universe: int = 60, max_readers: int = 10) -> tuple[int, list[frozenset[int]]]:
    """Any universe with any readers: from a few atoms (exact search) to dozens (heuristic)."""
    universe = draw(st.integers(0, max_universe))
    channel = st.integers(0, universe - 1) if universe else st.nothing()
    readers = draw(st.lists(st.frozensets(channel, max_size=universe), max_size=max_readers))
    return universe, readers


@st.composite
def few_atom_instances(draw) -> tuple[int, list[frozenset[int]]]:
    """At most 7 non-empty atoms, each 1-3 channels, plus up to 2 unread channels, shuffled."""
    n_readers = draw(st.integers(1, 6))
    signature = st.frozensets(st.integers(0, n_readers - 1), min_size=1)
    signatures = draw(st.lists(signature, min_size=1, max_size=7, unique=True))
    sizes = draw(st.lists(st.integers(1, 3), min_size=len(signatures), max_size=len(signatures)))
    layout = [s for s, size in zip(signatures, sizes, strict=True) for _ in range(size)]
    layout += [frozenset()] * draw(st.integers(0, 2))
    layout = draw(st.permutations(layout))
    readers = [frozenset(c for c, s in enumerate(layout) if r in s) for r in range(n_readers)]
    return len(layout), readers


def atoms(universe: int, readers: list[frozenset[int]]) -> dict[frozenset[int], list[int]]:
    """Channels grouped by the set of readers that read them."""
    grouped: dict[frozenset[int], list[int]] = {}
    for c in range(universe):
        grouped.setdefault(frozenset(r for r, reader in enumerate(readers) if c in reader), []).append(c)
    return grouped


def brute_force_runs(universe: int, readers: list[frozenset[int]]) -> int:
    """Fewest total runs over all atom orders, counting run starts (a reader present here, absent before)."""
    masks = [sum(1 << r for r in signature) for signature in atoms(universe, readers) if signature]
    best = None
    for order in itertools.permutations(masks):
        previous, starts = 0, 0
        for mask in order:
            starts += (mask & ~previous).bit_count()
            previous = mask
        best = starts if best is None else min(best, starts)
    return best or 0


def assert_permutation(order: list[int], universe: int) -> None:
    assert sorted(order) == list(range(universe))


@settings(max_examples=200, deadline=None)
@given(instances())
def test_channel_order_is_a_permutation_keeping_atoms_ascending_and_unread_last(instance):
    universe, readers = instance
    order = channel_order(universe, readers)
    assert_permutation(order, universe)
    position = {c: p for p, c in enumerate(order)}
    for signature, channels in atoms(universe, readers).items():
        assert [position[c] for c in channels] == sorted(position[c] for c in channels)
        if not signature:
            assert sorted(position[c] for c in channels) == list(range(universe - len(channels), universe))


@settings(max_examples=200, deadline=None)
@given(instances())
def test_never_worse_than_identity_order(instance):
    universe, readers = instance
    assert total_runs(channel_order(universe, readers), readers) <= total_runs(range(universe), readers)


@settings(max_examples=100, deadline=None)
@given(few_atom_instances())
def test_few_atoms_reach_the_brute_force_optimum(instance):
    universe, readers = instance
    order = channel_order(universe, readers)
    assert_permutation(order, universe)
    assert total_runs(order, readers) == brute_force_runs(universe, readers)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_intervals_of_a_hidden_order_become_one_run_each(data):
    # Up to 4 intervals cut the hidden order into at most 7 read atoms, so the exact search must find it.
    universe = data.draw(st.integers(1, 30))
    hidden = data.draw(st.permutations(range(universe)))
    bounds = st.tuples(st.integers(0, universe - 1), st.integers(0, universe - 1))
    readers = [frozenset(hidden[min(b):max(b) + 1]) for b in data.draw(st.lists(bounds, min_size=1, max_size=4))]
    order = channel_order(universe, readers)
    assert [len(runs(order, reader)) for reader in readers] == [1] * len(readers)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_nested_prefixes_become_one_run_each(data):
    # DenseNet-shaped readers (each reads a prefix of a hidden order) give many atoms, so the heuristic runs;
    # their signatures form a chain, which nearest neighbour from the empty sentinel walks in order.
    universe = data.draw(st.integers(1, 200))
    hidden = data.draw(st.permutations(range(universe)))
    lengths = data.draw(st.lists(st.integers(1, universe), min_size=1, max_size=30))
    readers = [frozenset(hidden[:length]) for length in lengths]
    order = channel_order(universe, readers)
    assert [len(runs(order, reader)) for reader in readers] == [1] * len(readers)


def test_runs_on_hand_made_orders():
    assert runs([0, 1, 2, 3, 4], {0, 1, 3}) == [(0, 2), (3, 4)]
    assert runs([4, 3, 2, 1, 0], [0, 1]) == [(3, 5)]
    assert runs([2, 0, 3, 1], {1, 2}) == [(0, 1), (3, 4)]
    assert runs([2, 0, 3, 1], {0, 1, 2, 3}) == [(0, 4)]
    assert runs([2, 0, 3, 1], set()) == []
    assert runs([0, 1, 2], [1, 1, 2]) == [(1, 3)]
    assert total_runs([2, 0, 3, 1], [{1, 2}, {0, 3}, set()]) == 3


def test_runs_rejects_channels_missing_from_the_order():
    with pytest.raises(ValueError, match=r"channels \[5\] are not in the order"):
        runs([0, 1, 2], {1, 5})


def test_channel_order_rejects_channels_outside_the_universe():
    with pytest.raises(ValueError, match=r"reader 1 reads channels \[-1, 4\] outside range\(4\)"):
        channel_order(4, [{0, 3}, {-1, 2, 4}])
    with pytest.raises(ValueError, match="non-negative"):
        channel_order(-1, [])


def test_scale_densenet_sized_segment():
    rng = random.Random(121)
    universe = 1000
    readers = [frozenset(rng.sample(range(universe), rng.randint(1, universe))) for _ in range(25)]
    order = channel_order(universe, readers)
    assert_permutation(order, universe)
    assert total_runs(order, readers) <= total_runs(range(universe), readers)
