"""Order a shared segment's channels so each reader's subset is as few contiguous runs as possible.

After unconstrained pruning a segment keeps channels 0..n-1 and every consumer (reader) reads a
subset. A subset that is one contiguous range exports as a slice (a view); a scattered one needs a
gather or a concat of slices. Export may permute the segment's channels, so we pick the order here.

Algorithm. Channels read by exactly the same readers form an "atom"; only the order of atoms
matters, and channels inside an atom keep their ascending original order. Writing each atom's
signature as a bit vector over readers, the total number of runs over all readers is half the
Hamming length of the closed tour empty -> atoms in order -> empty, because every run starts with
one 0->1 flip and ends with one 1->0 flip. Minimising runs is therefore a travelling-salesman tour
through the atoms plus an empty sentinel (consecutive ones is NP-hard in general), solved:

* exactly, by trying every atom order, when there are at most 8 atoms (8! tours, vectorised);
* otherwise heuristically: a nearest-neighbour tour from the sentinel, and separately the atoms
  in order of first appearance, each improved by 2-opt segment reversals until no move helps or a
  pass cap is hit; the shorter result wins. The second start makes the result never worse than the
  identity order: that order walks the atoms with repeats, skipping repeats cannot lengthen a walk
  under the Hamming metric (triangle inequality), and 2-opt only applies improving moves.

Cost, for n channels, r readers and k atoms: O(n r) to find atoms, O(k^2 r) for the distance
matrix, O(k^2) for nearest neighbour, and O(k^2) per 2-opt pass (one vectorised row per position),
with at most ``_MAX_TWO_OPT_PASSES`` passes. Channels no reader reads (an empty signature) go last.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence

import numpy as np
import torch

from hwprune.evaluate.calibration import first_output
from hwprune.graph.depgraph.index_maps import frozen_index_mapping
from hwprune.plan import WidthDecision
from hwprune.transform.passes import Pass, Surgery, TransformError
from hwprune.transform.permute import permutable, permute_group

_MAX_EXACT_ATOMS = 8
_MAX_TWO_OPT_PASSES = 20  # random 1000-channel, 25-reader segments converge in under 5


def channel_order(universe: int, readers: Sequence[Collection[int]]) -> list[int]:
    """A permutation of range(universe): order[position] = original channel index.

    Chosen to minimise ``total_runs(order, readers)`` so that export can slice instead of gather.
    """
    if universe < 0:
        raise ValueError(f"universe must be non-negative, got {universe}")
    member = np.zeros((universe, len(readers)), dtype=bool)
    for r, reader in enumerate(readers):
        channels = list(reader)
        outside = sorted({c for c in channels if not 0 <= c < universe})
        if outside:
            raise ValueError(f"reader {r} reads channels {outside} outside range({universe})")
        member[channels, r] = True
    if universe == 0:
        return []

    signatures, first, atom_of = np.unique(member, axis=0, return_index=True, return_inverse=True)
    atom_of = atom_of.reshape(-1)
    # Renumber atoms by first appearance, so ties resolve towards the original order.
    by_appearance = np.argsort(first, kind="stable")
    rank = np.empty_like(by_appearance)
    rank[by_appearance] = np.arange(len(by_appearance))
    signatures, atom_of = signatures[by_appearance], rank[atom_of]

    empty = ~signatures.any(axis=1)
    used = np.flatnonzero(~empty)
    tour = _best_tour(signatures[used])
    atoms = [int(used[i]) for i in tour] + [int(a) for a in np.flatnonzero(empty)]
    members = [[] for _ in range(len(signatures))]
    for channel, atom in enumerate(atom_of.tolist()):
        members[atom].append(channel)
    return [channel for atom in atoms for channel in members[atom]]


def runs(order: Sequence[int], channels: Collection[int]) -> list[tuple[int, int]]:
    """The [start, stop) position ranges that `channels` occupy in `order`, ascending (maximal runs).

    Each run is one slice at export; more than one means a gather or a concat.
    """
    return _runs(_positions(order), channels)


def total_runs(order: Sequence[int], readers: Sequence[Collection[int]]) -> int:
    """Sum over readers of len(runs(order, reader)): the number of slices the export needs."""
    position = _positions(order)
    return sum(len(_runs(position, reader)) for reader in readers)


def _positions(order: Sequence[int]) -> dict[int, int]:
    return {channel: i for i, channel in enumerate(order)}


def _runs(position: dict[int, int], channels: Collection[int]) -> list[tuple[int, int]]:
    wanted = set(channels)
    missing = sorted(wanted - position.keys())
    if missing:
        raise ValueError(f"channels {missing} are not in the order")
    result: list[tuple[int, int]] = []
    for p in sorted(position[c] for c in wanted):
        if result and result[-1][1] == p:
            result[-1] = (result[-1][0], p + 1)
        else:
            result.append((p, p + 1))
    return result


def _best_tour(signatures: np.ndarray) -> list[int]:
    """Indices into ``signatures`` (non-empty, distinct rows) in the order with the fewest runs."""
    k = len(signatures)
    if k == 0:
        return []
    # Node 0 is the empty sentinel, node i + 1 is atom i.
    nodes = np.vstack([np.zeros((1, signatures.shape[1]), dtype=bool), signatures]).astype(np.int32)
    distance = nodes @ (1 - nodes).T + (1 - nodes) @ nodes.T
    if k <= _MAX_EXACT_ATOMS:
        return _exact_tour(distance)
    candidates = [_two_opt(distance, _nearest_neighbour_tour(distance)), _two_opt(distance, np.arange(k + 1))]
    best = min(candidates, key=lambda t: _tour_length(distance, t))
    return [int(node) - 1 for node in best[1:]]


def _exact_tour(distance: np.ndarray) -> list[int]:
    k = len(distance) - 1
    paths = np.array(list(itertools.permutations(range(1, k + 1))), dtype=np.intp).reshape(-1, k)
    sentinel = np.zeros((len(paths), 1), dtype=np.intp)
    closed = np.hstack([sentinel, paths, sentinel])
    lengths = distance[closed[:, :-1], closed[:, 1:]].sum(axis=1)
    return [int(node) - 1 for node in paths[int(np.argmin(lengths))]]


def _nearest_neighbour_tour(distance: np.ndarray) -> np.ndarray:
    n = len(distance)
    visited = np.zeros(n, dtype=bool)
    tour = np.empty(n, dtype=np.intp)
    current = 0
    for step in range(n):
        tour[step] = current
        visited[current] = True
        if step + 1 < n:
            current = int(np.argmin(np.where(visited, np.iinfo(distance.dtype).max, distance[current])))
    return tour


def _two_opt(distance: np.ndarray, tour: np.ndarray) -> np.ndarray:
    """Reverse tour segments while that shortens the closed tour; tour[0] (the sentinel) stays put."""
    tour = tour.copy()
    n = len(tour)
    for _ in range(_MAX_TWO_OPT_PASSES):
        improved = False
        following = np.roll(tour, -1)
        edge = distance[tour, following]
        for i in range(1, n - 1):
            # Reversing tour[i..j] swaps edges (a, b), (c, d) for (a, c), (b, d); j runs over i + 1..n - 1.
            a, b = tour[i - 1], tour[i]
            change = distance[a, tour[i + 1:]] + distance[b, following[i + 1:]] - edge[i - 1] - edge[i + 1:]
            j = i + 1 + int(np.argmin(change))
            if change[j - i - 1] < 0:
                tour[i:j + 1] = tour[i:j + 1][::-1].copy()
                following = np.roll(tour, -1)
                edge = distance[tour, following]
                improved = True
        if not improved:
            break
    return tour


def _tour_length(distance: np.ndarray, tour: np.ndarray) -> int:
    return int(distance[tour, np.roll(tour, -1)].sum())


class ExactPermutation(Pass[Surgery]):
    """A pass that only permutes channels: the model's output on the example input is taken before
    and must be the same after (a permutation is a symmetry; anything else is a bug)."""

    def requires(self, surgery: Surgery) -> None:
        with torch.no_grad():
            self._before = first_output(surgery.analysis.model(surgery.analysis.capture.example_input)).clone()

    def ensures(self, surgery: Surgery) -> None:
        with torch.no_grad():
            after = first_output(surgery.analysis.model(surgery.analysis.capture.example_input))
        scale = max(1.0, float(self._before.abs().max()))
        if not torch.allclose(after, self._before, rtol=1e-3, atol=1e-4 * scale):
            raise TransformError(f"{self.name} changed the model's output (max abs diff "
                                 f"{float((after - self._before).abs().max()):.3g})")


class ReorderSegments(ExactPermutation):
    """Permute each unconstrained segment's channels (an exact symmetry of the network): the readers'
    union first, in the order ``channel_order`` finds. Renumbers the plan's width decisions to match."""

    name = "reorder-segments"


    def call(self, surgery: Surgery) -> bool:
        changed = False
        with frozen_index_mapping(surgery.analysis.capture.dependency_graph):  # permuting changes no count
            for gid, decision in surgery.width.items():
                if decision.readers is not None and permutable(surgery.analysis, gid) is None:
                    surgery.width[gid] = _reorder(surgery, gid, decision)
                    changed = True
        return changed



def _reorder(surgery: Surgery, gid: str, decision: WidthDecision) -> WidthDecision:
    """Permute the segment's channels: the union first, in the order that minimises reader runs."""
    union = decision.indices
    position = {channel: p for p, channel in enumerate(union)}
    order = channel_order(len(union), [[position[c] for c in reads] for reads in decision.readers.values()])
    unused = [c for c in range(decision.of) if c not in position]
    permutation = [union[p] for p in order] + unused
    permute_group(surgery.analysis, gid, permutation)
    new_index = {old: new for new, old in enumerate(permutation)}
    return WidthDecision(decision.keep, decision.of, list(range(len(union))),
                         {layer: sorted(new_index[c] for c in reads) for layer, reads in decision.readers.items()})
