"""The channel permutation search for N:M sparsity (hwprune.sparsity.permutation)."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwprune.sparsity.masks import is_nm, nm_mask, retained
from hwprune.sparsity.permutation import best_random_permutation, efficacy, row_bound, search_permutation


def _random(rows, cols, seed=0):
    return np.random.default_rng(seed).random((rows, cols))


def _exhaustive(matrix, n, m):
    """The best retained magnitude over every assignment of columns to stripes (order inside a
    stripe and order of stripes do not matter): brute force for a few columns."""
    cols = matrix.shape[1]

    def splits(remaining):
        if not remaining:
            yield []
            return
        first, rest = remaining[0], remaining[1:]
        for others in itertools.combinations(rest, m - 1):
            left = [c for c in rest if c not in others]
            for tail in splits(left):
                yield [first, *others, *tail]

    return max(retained(matrix[:, order], n, m) for order in splits(list(range(cols))))


def _is_permutation(order, cols):
    return order.dtype == np.int64 and sorted(order.tolist()) == list(range(cols))


def test_order_is_a_permutation_and_better_than_identity():
    matrix = _random(128, 64)
    order = search_permutation(matrix, 2, 4)
    assert _is_permutation(order, 64)
    assert retained(matrix[:, order], 2, 4) > retained(matrix, 2, 4)  # strictly better on random
    assert 0.2 < efficacy(matrix, order, 2, 4) <= 1.0


def test_deterministic_for_a_seed():
    matrix = _random(96, 48, seed=3)
    first = search_permutation(matrix, 2, 4, seed=7)
    assert np.array_equal(first, search_permutation(matrix, 2, 4, seed=7))


@pytest.mark.parametrize("seed", range(4))
def test_two_stripes_reach_the_exhaustive_optimum(seed):
    matrix = _random(8, 8, seed)
    order = search_permutation(matrix, 2, 4, seed=seed)
    assert retained(matrix[:, order], 2, 4) == pytest.approx(_exhaustive(matrix, 2, 4), rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_three_stripes_near_the_exhaustive_optimum(seed):
    # 5775 assignments: the search is a local search, so allow 1% of the gap to the optimum
    matrix = _random(8, 12, seed)
    best = _exhaustive(matrix, 2, 4)
    base = retained(matrix, 2, 4)
    found = retained(matrix[:, search_permutation(matrix, 2, 4, seed=seed)], 2, 4)
    assert found >= best - 0.01 * (best - base) - 1e-12


@pytest.mark.parametrize(("n", "m"), [(1, 4), (2, 4), (3, 4), (2, 8), (4, 8), (1, 2)])
def test_any_n_m(n, m):
    matrix = _random(64, 8 * m, seed=n + m)
    order = search_permutation(matrix, n, m)
    assert _is_permutation(order, 8 * m)
    assert retained(matrix[:, order], n, m) > retained(matrix, n, m)
    assert retained(matrix[:, order], n, m) <= row_bound(matrix, n, m) + 1e-9


def test_columns_not_a_multiple_of_m():
    with pytest.raises(ValueError, match="multiple"):
        search_permutation(_random(8, 10), 2, 4)
    with pytest.raises(ValueError):
        search_permutation(_random(8, 8), 4, 4)


def test_masks_after_the_permutation_are_n_m():
    weight = torch.randn(32, 64, 3, 3, generator=torch.Generator().manual_seed(0))
    matrix = weight.movedim(1, -1).reshape(-1, 64).abs().numpy()  # masks.columns: [O*kh*kw, I]
    order = search_permutation(matrix, 2, 4)
    permuted = weight[:, torch.from_numpy(order)]
    sparse = permuted * nm_mask(permuted, 2, 4)
    assert is_nm(sparse, 2, 4)
    assert sparse.abs().sum().item() == pytest.approx(retained(matrix[:, order], 2, 4), rel=1e-5)
    assert sparse.abs().sum().item() > (weight * nm_mask(weight, 2, 4)).abs().sum().item()


def test_degenerate_inputs_keep_the_identity():
    assert np.array_equal(search_permutation(np.zeros((4, 8)), 2, 4), np.arange(8))
    assert np.array_equal(search_permutation(_random(4, 4), 2, 4), np.arange(4))  # one stripe
    assert np.array_equal(search_permutation(np.ones((3, 16)), 2, 4), np.arange(16))  # no gain anywhere


def test_random_baseline_and_efficacy():
    matrix = _random(128, 64, seed=1)
    order = best_random_permutation(matrix, 2, 4, count=50, seed=0)
    assert _is_permutation(order, 64)
    assert efficacy(matrix, order, 2, 4) >= 0.0
    assert efficacy(matrix, np.arange(64), 2, 4) == 0.0
    assert efficacy(np.ones((2, 8)), np.arange(8), 2, 4) == 1.0  # no gap


def test_wide_matrix_uses_windows_and_stays_bounded():
    matrix = _random(600, 512, seed=2)
    order = search_permutation(matrix, 2, 4, max_seconds=5.0)
    assert _is_permutation(order, 512)
    assert retained(matrix[:, order], 2, 4) > retained(matrix, 2, 4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 24), stripes=st.integers(1, 6), nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8)]),
       seed=st.integers(0, 2**16), sparse=st.booleans(), signed=st.booleans())
def test_property_never_worse_and_a_permutation(rows, stripes, nm, seed, sparse, signed):
    n, m = nm
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((rows, stripes * m)).astype(np.float32)
    if sparse:
        matrix[rng.random(matrix.shape) < 0.5] = 0
    if not signed:
        matrix = np.abs(matrix)
    order = search_permutation(matrix, n, m, seed=seed)
    assert _is_permutation(order, stripes * m)
    assert retained(matrix[:, order], n, m) >= retained(matrix, n, m)
    permuted = torch.from_numpy(matrix[:, order])
    assert is_nm(permuted * nm_mask(permuted, n, m), n, m)
