"""Channel permutations for N:M sparsity: reorder the input channels (columns) of a weight matrix so
that the N:M mask, taken over runs of M consecutive columns, keeps more of the weight magnitude.

A permutation only decides which columns share a run ("stripe") of M: the order inside a stripe and
the order of the stripes change nothing. The search here learns from NVIDIA ASP's
(``apex/contrib/sparsity/permutation_search_kernels``; Pool & Yu, "Channel Permutations for N:M
Sparsity", NeurIPS 2021) but is its own numpy code:

- **channel swaps**, best improvement first: for every pair of columns in different stripes the gain
  of exchanging them is computed in one batch. Removing column ``q`` from its stripe leaves, per row,
  a sum of the ``n`` largest of the other ``m - 1`` values and a threshold (the ``n``-th largest of
  them); putting column ``c`` in ``q``'s place then adds ``sum_rows max(0, x_c - threshold_q)``.
  So one ``[C, C]`` table ``add[c, q]`` (plus a per-column loss) prices every swap, and after a
  round only the columns of the touched stripes are priced again. Each round applies a whole
  matching of improving swaps (no stripe in two swaps: the gains of swaps on disjoint stripes add);
- **stripe pairs, exhaustively** where it is cheap (M = 4: all 35 ways to split two stripes' 8
  columns into two stripes, so also the double exchanges no single swap reaches); ASP's "stripe
  group" optimisation with groups of two stripes;
- **escape attempts** (ASP's bounded regressions): from the best order found, a random exchange
  between two stripes, then descend again; the best order is kept.
- **windows** for wide matrices: pricing all pairs costs ``C * C * rows``; when that is too much
  the stripes are split into random windows of a few dozen stripes each, searched one at a time,
  and the windows are drawn again on the next pass (ASP subdivides wide matrices the same way).

:func:`efficacy` reports the result in ASP's terms. Nothing here imports the rest of hwprune.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from hwprune.sparsity.masks import retained

# Budget of elementwise operations for one [window, window, rows] swap table: windows are sized so
# that pricing all swaps in one stays around a tenth of a second on one core.
_TABLE_BUDGET = 1e7
_CHUNK_CELLS = 4e6  # elements per temporary block while pricing the table
# Elementwise operations one full pass over all stripe pairs may cost (the splits of every pair of
# stripes, every row): above it the pair moves are left out and single swaps do the work.
_PAIR_BUDGET = 2e7
# Work one search may spend (elementwise operations; about half a second on one core), times effort.
_WORK_BUDGET = 8e7
_KICK_STRIPES = 4  # stripes shuffled together by one escape attempt


def _check(matrix: np.ndarray, n: int, m: int) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"expected a [rows, columns] matrix, got shape {matrix.shape}")
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
    if matrix.shape[1] % m:
        raise ValueError(f"{matrix.shape[1]} columns are not a multiple of M = {m}")
    return matrix


def _top_sum(blocks: np.ndarray, n: int) -> np.ndarray:
    """Sum of the ``n`` largest along the FIRST axis (``m`` of them): numpy's sort is slow on many
    tiny rows, so small ``m`` go through an odd-even transposition network of minimum/maximum."""
    m = blocks.shape[0]
    if m > 8:
        return np.sort(blocks, axis=0)[m - n:].sum(0)
    lanes = [blocks[k] for k in range(m)]
    for sweep in range(m):
        for k in range(sweep % 2, m - 1, 2):
            low, high = np.minimum(lanes[k], lanes[k + 1]), np.maximum(lanes[k], lanes[k + 1])
            lanes[k], lanes[k + 1] = low, high
    return sum(lanes[m - n:])


def row_bound(matrix: np.ndarray, n: int, m: int) -> float:
    """The magnitude kept if every row kept its own largest ``n/m`` of entries, anywhere in the row:
    an upper bound on what any column permutation can reach (ASP's "50% rows" for 2:4)."""
    matrix = np.abs(_check(matrix, n, m))
    keep = matrix.shape[1] * n // m
    return float(np.sort(matrix, axis=1)[:, matrix.shape[1] - keep:].sum())


def efficacy(matrix: np.ndarray, order: np.ndarray, n: int, m: int) -> float:
    """ASP's efficacy of a permutation: the fraction of the magnitude gap it recovers,

        (retained(permuted) - retained(identity)) / (row_bound - retained(identity)),

    exactly as ``efficacy()`` in apex's ``permutation_search_kernels/permutation_utilities.py``
    (used by ``permutation_tests/permutation_test.py`` and the paper): 0 is the unpermuted N:M
    mask, 1 (100%) the per-row bound of :func:`row_bound` (each row keeping its largest half for
    2:4, ASP's "50% rows"), which no permutation can beat and which is usually out of reach; it is
    not measured against the optimal permutation (unknown beyond a few dozen columns). 1.0 when
    there is no gap. ASP's published numbers (apex ``permutation_tests/README.md``, one random
    ``np.random.rand`` matrix of 128 rows x 64 columns, 2:4): channel swaps 32.1% (36.0% with 1000
    escape attempts), stripe groups of 8 columns 35.5%, of 12 columns 36.6%, best of 1000 random
    permutations 11.1% (14.1% for 100000).
    """
    matrix = np.abs(_check(matrix, n, m)).astype(np.float64)
    base = _fast(matrix, n, m)
    gap = row_bound(matrix, n, m) - base
    if gap <= 0:
        return 1.0
    return (_fast(matrix[:, np.asarray(order)], n, m) - base) / gap


def best_random_permutation(matrix: np.ndarray, n: int, m: int, count: int, seed: int = 0) -> np.ndarray:
    """ASP's "random,<count>" baseline: the best of ``count`` uniformly random column orders, the
    identity included (so never worse than it)."""
    matrix = np.abs(_check(matrix, n, m)).astype(np.float64)
    rng = np.random.default_rng(seed)
    best, best_value = np.arange(matrix.shape[1], dtype=np.int64), _fast(matrix, n, m)
    for _ in range(count):
        order = rng.permutation(matrix.shape[1]).astype(np.int64)
        value = _fast(matrix[:, order], n, m)
        if value > best_value:
            best, best_value = order, value
    return best


def search_permutation(matrix: np.ndarray, n: int, m: int, seed: int = 0, max_seconds: float = 2.0,
                       escape_attempts: int = 20, effort: float = 1.0) -> np.ndarray:
    """A column order (int64, a permutation of ``range(C)``) for ``matrix`` (``[rows, C]``, its
    magnitudes are used; ``C`` a multiple of ``m``) under which an N:M mask keeps at least as much
    magnitude as without it: ``retained(matrix[:, order], n, m) >= retained(matrix, n, m)``.

    The search (see the module docstring) stops when it can improve no further, after
    ``escape_attempts`` escapes from local optima, when it has spent its work budget (counted in
    elementwise operations, about ``effort`` x 2e8, at least one pass over all windows: about half
    a second on one core), or after ``max_seconds``, whichever comes first. Counting work rather
    than time makes the result deterministic for a ``seed`` on any machine, unless the clock cuts
    it first (then the best order found so far is returned). Raises ValueError when ``C`` is not a
    multiple of ``m``.
    """
    matrix = _check(matrix, n, m)
    values = np.abs(np.asarray(matrix, dtype=np.float64))
    rows, channels = values.shape
    identity = np.arange(channels, dtype=np.int64)
    stripes = channels // m
    if stripes < 2 or rows == 0:
        return identity
    rng = np.random.default_rng(seed)
    window = max(2, int(np.sqrt(_TABLE_BUDGET / rows) // m))
    one_pass = min(window, stripes) * m * channels * rows  # pricing the swap tables of every window once
    budget = _Budget(effort * max(_WORK_BUDGET, one_pass), max_seconds)
    order = identity.copy()
    if window >= stripes:
        order = _descend(values, n, m, rng, escape_attempts, budget)
    else:
        # wide: windows of stripes, drawn again each pass, until a pass improves nothing
        layout = np.arange(stripes)  # the first pass takes contiguous windows
        improved = True
        while improved and not budget.spent():
            improved = False
            for start in range(0, stripes, window):
                chosen = layout[start:start + window]
                if len(chosen) < 2 or budget.spent():
                    continue
                cols = (chosen[:, None] * m + np.arange(m)).reshape(-1)
                current = order[cols]
                before = _fast(values[:, current], n, m)
                local = _descend(values[:, current], n, m, rng, 0, budget)
                if _fast(values[:, current[local]], n, m) > before:
                    order[cols] = current[local]
                    improved = True
            layout = rng.permutation(stripes)
    # the guarantee, checked with the caller's own arithmetic
    if retained(matrix[:, order], n, m) < retained(matrix, n, m):
        return identity
    return order


class _Budget:
    """Work (elementwise operations) and wall time a search may spend."""

    def __init__(self, work: float, seconds: float):
        self.work, self.used = work, 0.0
        self.deadline = time.perf_counter() + max(0.0, float(seconds))

    def charge(self, amount: float) -> None:
        self.used += amount

    def spent(self) -> bool:
        return self.used >= self.work or time.perf_counter() >= self.deadline


class _State:
    """The columns in their current order and the swap-pricing tables of :func:`_descend`."""

    def __init__(self, values: np.ndarray, n: int, m: int, budget: _Budget):
        self.n, self.m, self.budget = n, m, budget
        self.exact = values.copy()  # float64, for the gains actually applied
        self.fast = np.ascontiguousarray(values.T, dtype=np.float32)  # [C, rows] for the table
        self.channels = values.shape[1]
        self.stripes = self.channels // m
        self.order = np.arange(self.channels, dtype=np.int64)
        self.threshold = np.empty((self.channels, values.shape[0]), dtype=np.float32)
        self.loss = np.empty(self.channels, dtype=np.float64)
        self.add = np.empty((self.channels, self.channels), dtype=np.float32)
        self.stripe_of = np.arange(self.channels) // m
        # stripe pairs: best gain and split of each, re-priced for stripes changed since (dirty)
        self.pair_gain = np.full((self.stripes, self.stripes), -np.inf)
        self.pair_split = np.zeros((self.stripes, self.stripes), dtype=np.int64)
        self.dirty = np.ones(self.stripes, dtype=bool)
        self._price_stripes(np.arange(self.stripes))
        self._price_columns(np.arange(self.channels))

    def copy(self) -> _State:
        twin = object.__new__(_State)
        for key, item in vars(self).items():
            setattr(twin, key, item.copy() if isinstance(item, np.ndarray) else item)  # budget: shared
        return twin

    def value(self) -> float:
        return _fast(self.exact, self.n, self.m)

    def _price_stripes(self, which: np.ndarray) -> None:
        """Per column of these stripes: the loss of removing it and the threshold left behind."""
        n, m = self.n, self.m
        cols = (which[:, None] * m + np.arange(m)).reshape(-1)
        block = self.exact[:, cols].reshape(-1, len(which), m)  # [rows, stripes, m]
        self.budget.charge(8 * block.size)
        ranked = np.argsort(-block, axis=-1, kind="stable")
        ordered = np.take_along_axis(block, ranked, axis=-1)
        rank = np.empty_like(ranked)
        np.put_along_axis(rank, ranked, np.arange(m)[None, None, :].repeat(block.shape[0], 0)
                          .repeat(len(which), 1), axis=-1)
        kept = rank < n
        nth, next_ = ordered[..., n - 1:n], ordered[..., n:n + 1]
        threshold = np.where(kept, next_, nth)  # n-th largest of the other m - 1 values
        loss = np.where(kept, next_ - block, 0.0)  # <= 0: what removing the column costs
        self.threshold[cols] = threshold.reshape(block.shape[0], -1).T
        self.loss[cols] = loss.reshape(block.shape[0], -1).sum(0)

    def _price_columns(self, positions: np.ndarray) -> None:
        """add[c, q] = sum over rows of max(0, x_c - threshold_q) for q in ``positions``."""
        rows = self.fast.shape[1]
        self.budget.charge(len(positions) * self.channels * rows)
        chunk = max(1, int(_CHUNK_CELLS // max(1, self.channels * rows)))
        for start in range(0, len(positions), chunk):
            part = positions[start:start + chunk]
            diff = self.fast[None, :, :] - self.threshold[part][:, None, :]
            np.maximum(diff, 0, out=diff)
            self.add[:, part] = diff.sum(-1, dtype=np.float64).T

    def swap_gains(self) -> np.ndarray:
        self.budget.charge(4 * self.channels ** 2)
        gains = self.add + self.add.T + self.loss[:, None] + self.loss[None, :]
        gains[self.stripe_of[:, None] == self.stripe_of[None, :]] = -np.inf
        return gains

    def exact_gain(self, groups: tuple[int, ...], new_cols: np.ndarray) -> float:
        """Exact change of the kept magnitude when the stripes ``groups`` take the columns
        ``new_cols`` (positions of the current order, m per stripe)."""
        m = self.m
        old = np.concatenate([np.arange(g * m, g * m + m) for g in groups])
        return (_fast(self.exact[:, new_cols], self.n, m) - _fast(self.exact[:, old], self.n, m))

    def apply(self, moves: list[tuple[tuple[int, ...], np.ndarray]]) -> None:
        """Rearrange columns within sets of stripes (disjoint sets), then re-price what moved."""
        m = self.m
        touched = []
        for groups, new_cols in moves:
            old = np.concatenate([np.arange(g * m, g * m + m) for g in groups])
            self.exact[:, old] = self.exact[:, new_cols]
            self.fast[old] = self.fast[new_cols]
            self.add[old] = self.add[new_cols]
            self.order[old] = self.order[new_cols]
            touched.extend(groups)
        which = np.array(sorted(set(touched)))
        self.dirty[which] = True
        self._price_stripes(which)
        self._price_columns((which[:, None] * m + np.arange(m)).reshape(-1))


def _swap_round(state: _State, tolerance: float) -> bool:
    """Apply a matching of improving single swaps, best first; whether any was applied."""
    gains = state.swap_gains()
    upper = np.triu(gains, 1)
    upper[np.tril_indices_from(upper)] = -np.inf
    candidates = np.flatnonzero(upper > tolerance)
    if not len(candidates):
        return False
    candidates = candidates[np.argsort(-upper.reshape(-1)[candidates], kind="stable")]
    m, used, moves = state.m, set(), []
    for flat in candidates:
        i, j = divmod(int(flat), state.channels)
        a, b = int(state.stripe_of[i]), int(state.stripe_of[j])
        if a in used or b in used:
            continue
        cols = np.concatenate([np.arange(a * m, a * m + m), np.arange(b * m, b * m + m)])
        cols[i - a * m], cols[m + j - b * m] = j, i
        if state.exact_gain((a, b), cols) > tolerance:
            moves.append(((a, b), cols))
            used.update((a, b))
            if len(used) >= state.stripes - 1:
                break
    if moves:
        state.apply(moves)
    return bool(moves)


def _pair_splits(m: int) -> np.ndarray:
    """Every way to split 2m columns into two stripes of m (each split once), as index arrays."""
    splits = []
    for first in itertools.combinations(range(1, 2 * m), m - 1):
        left = (0, *first)
        right = tuple(c for c in range(2 * m) if c not in left)
        splits.append(left + right)
    return np.array(splits, dtype=np.int64)


def _pair_round(state: _State, splits: np.ndarray, tolerance: float) -> bool:
    """ASP's stripe groups of two: the best split of every pair of stripes (re-priced only where a
    stripe changed), then a matching of the improving ones, best first; whether any was applied."""
    n, m, rows, stripes = state.n, state.m, state.exact.shape[0], state.stripes
    stripe_values = state.fast.reshape(stripes, m, rows)  # float32: exact_gain checks each move
    kept = _top_sum(stripe_values.transpose(1, 0, 2), n).sum(-1)
    first, second = np.triu_indices(stripes, 1)
    stale = state.dirty[first] | state.dirty[second]
    pairs = np.stack([first[stale], second[stale]], 1)
    batch = max(1, int(_CHUNK_CELLS // max(1, rows * len(splits) * 2 * m)))
    for start in range(0, len(pairs), batch):
        if state.budget.spent():
            return False  # the table is incomplete: apply nothing from it
        chunk = pairs[start:start + batch]
        state.budget.charge(2 * len(chunk) * len(splits) * 2 * m * rows)  # a sorting network: 2x
        block = stripe_values[chunk].reshape(len(chunk), 2 * m, rows).transpose(1, 0, 2)  # [2m, pairs, rows]
        arranged = block[splits.T.reshape(2, m, -1).transpose(1, 0, 2)]  # [m, 2 stripes, splits, pairs, rows]
        value = _top_sum(arranged, n).sum((0, 3), dtype=np.float64).T  # [pairs, splits]
        best = value.argmax(1)
        gain = value[np.arange(len(chunk)), best] - kept[chunk].sum(1)
        state.pair_gain[chunk[:, 0], chunk[:, 1]] = gain
        state.pair_split[chunk[:, 0], chunk[:, 1]] = best
    state.dirty[:] = False
    found = np.flatnonzero(state.pair_gain > tolerance)
    found = found[np.argsort(-state.pair_gain.reshape(-1)[found], kind="stable")]
    used, moves = set(), []
    for flat in found:
        a, b = divmod(int(flat), stripes)
        if a in used or b in used:
            continue
        local = np.concatenate([np.arange(a * m, a * m + m), np.arange(b * m, b * m + m)])
        new_cols = local[splits[state.pair_split[a, b]]]
        if state.exact_gain((a, b), new_cols) > tolerance:
            moves.append(((a, b), new_cols))
            used.update((a, b))
    if moves:
        state.apply(moves)
    return bool(moves)


def _descend(values: np.ndarray, n: int, m: int, rng: np.random.Generator, escapes: int,
             budget: _Budget) -> np.ndarray:
    """Local search on one window (``values``: non-negative float64 ``[rows, C]``): swap rounds to a
    local optimum, a pass over stripe pairs when affordable, escapes; the best order found."""
    state = _State(values, n, m, budget)
    tolerance = 1e-12 * max(1.0, float(values.sum()))
    splits = _pair_splits(m) if m <= 4 else None
    pair_cost = state.stripes ** 2 / 2 * (0 if splits is None else len(splits)) * 2 * m * values.shape[0]
    use_pairs = splits is not None and pair_cost <= _PAIR_BUDGET
    best, best_value = state.copy(), state.value()
    attempt = 0
    while True:
        while not budget.spent():
            if _swap_round(state, tolerance):
                continue
            if use_pairs and _pair_round(state, splits, tolerance):
                continue
            break
        value = state.value()
        if value > best_value + tolerance:
            best, best_value = state.copy(), value
        if attempt >= escapes or budget.spent():
            return best.order
        attempt += 1
        state = best.copy()
        # escape: from the best order, shuffle the columns of a few random stripes together (one
        # exchange would be undone by the next descent)
        groups = np.sort(rng.choice(state.stripes, size=min(state.stripes, _KICK_STRIPES), replace=False))
        cols = (groups[:, None] * m + np.arange(m)).reshape(-1)
        state.apply([(tuple(int(g) for g in groups), rng.permutation(cols))])


def _fast(matrix: np.ndarray, n: int, m: int) -> float:
    return retained(matrix, n, m, exact=False)
