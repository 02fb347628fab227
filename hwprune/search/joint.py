"""Width and depth in one knapsack: how many channels each group keeps, which spans merge and which
residual blocks go, under one predicted-latency budget.

The depth options (``cost.structural``; N:M layers, ``cost.sparse``, are options of the same
kind) form *units*: the connected components of "these two cannot both be taken" (they share a
layer: overlapping spans of one chain, a block and the spans inside its branch, a span with and
without its skip, a layer made N:M and a span that merges it away). A unit's choices are its sets of compatible
options, the empty set first; there are few (a chain of six convs has at most 32 ways to cut it
into merged runs). Each unit is one more class of the multiple-choice knapsack the width search
already solves (``search.width``), beside one class per channel group:

- a group's class: its allowed keep counts, valued ``weight x log(retained importance)``;
- a unit's class: its option sets, valued ``-ln 2 x`` the sum of their measured costs
  (``importance.option_costs``: 1 - cosine with that option alone). The group weights are sensitivities
  in the same measure (1 - cosine with half the group silenced), and half a group is valued
  ``weight x ln(1/2)``: ``ln 2`` converts a measured cost into the knapsack's value.

Latency is linearised around the current point as for width alone: a group's cost is the time of
the layers it sizes with the current depth choices taken; a unit's cost is the time of its layers
under each option set at the current widths. One solve picks widths and depth together; the
point moves there and the costs are taken again, until it stops moving. Then, depth held, widths
are fitted greedily so that the full prediction is within budget (``search.width``). This is the
joint problem solved whole at each linearisation, rather than alternating a width search and a
depth DP: alternating from a width solution that already fits never finds a reason to merge.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import networkx as nx

from hwprune.cost.layers import Layer
from hwprune.cost.predictor import TablePredictor
from hwprune.cost.structural import StructuralOption
from hwprune.errors import PlanError
from hwprune.graph.analyze import Analysis
from hwprune.importance.scores import Importance
from hwprune.search import knapsack
from hwprune.search.width import (
    GRID,
    ROUNDS,
    SearchResult,
    allowed_counts,
    greedy_fit,
    group_values,
    tied,
)

VALUE_PER_COST = math.log(2)
MAX_SETS = 256  # option sets per unit; a longer chain is searched with its shorter spans only


def units(options: Iterable[StructuralOption]) -> list[list[frozenset[str]]]:
    """The option sets of each unit, the empty set first."""
    options = list(options)
    conflicts = nx.Graph()
    conflicts.add_nodes_from(o.key for o in options)
    for i, a in enumerate(options):
        for b in options[i + 1:]:
            if a.removes & b.removes:
                conflicts.add_edge(a.key, b.key)
    by_key = {o.key: o for o in options}
    found = []
    for component in nx.connected_components(conflicts):
        keys = sorted(component, key=lambda k: (len(by_key[k].removes), k))
        sets = _independent_sets(keys, conflicts, MAX_SETS)
        while sets is None:  # too many: drop the longest spans until it fits
            keys = keys[:-1]
            sets = _independent_sets(keys, conflicts, MAX_SETS)
        found.append(sets)
    return found


def _independent_sets(keys: list[str], conflicts: nx.Graph, limit: int) -> list[frozenset[str]] | None:
    sets: list[frozenset[str]] = []

    def extend(start: int, chosen: frozenset[str]) -> bool:
        sets.append(chosen)
        if len(sets) > limit:
            return False
        for i in range(start, len(keys)):
            key = keys[i]
            if not any(conflicts.has_edge(key, other) for other in chosen):
                if not extend(i + 1, chosen | {key}):
                    return False
        return True

    return sets if extend(0, frozenset()) else None


def search_joint(analysis: Analysis, predictor: TablePredictor, importance: Importance, alignment: int,
                 budget_ms: float, min_keep: float, weights: dict[str, float] | None, costs: dict[str, float],
                 widths: bool = True, fixed: frozenset[str] | None = None) -> SearchResult:
    """Keep counts and depth options maximising the joint objective with predicted latency <= budget;
    ``widths`` False keeps every group whole (depth only); ``fixed`` holds the depth options (a structure
    a measured round chose) and moves the widths only."""
    started = time.perf_counter()
    options = allowed_counts(analysis, alignment, min_keep)
    if not widths:
        options = {gid: counts[-1:] for gid, counts in options.items()}
    options, values = tied(options, group_values(analysis, predictor, importance, options, weights), predictor.ties)
    priced = [o for key, o in predictor.options.items() if key in costs]
    unit_sets = units(priced)
    if fixed is not None:
        unit_sets = [[fixed & frozenset().union(*sets)] for sets in unit_sets]
    unit_values = [[-VALUE_PER_COST * sum(costs[k] for k in chosen) for chosen in sets] for sets in unit_sets]
    by_key = {o.key: o for o in priced}
    _check_smallest(predictor, options, unit_sets, by_key, budget_ms, min_keep)
    counts = {gid: c[-1] for gid, c in options.items()}
    depth: frozenset[str] = frozenset() if fixed is None else frozenset().union(*(s[0] for s in unit_sets))
    rounds = 0
    while rounds < ROUNDS:
        rounds += 1
        proposal = _round(predictor, options, values, unit_sets, unit_values, by_key, counts, depth, budget_ms)
        if proposal is None or proposal == (counts, depth):
            break
        counts, depth = proposal
    view = predictor.with_depth(depth)
    counts = greedy_fit(view, options, values, counts, budget_ms)
    objective = sum(values[gid][options[gid].index(n)] for gid, n in counts.items()) + sum(
        -VALUE_PER_COST * costs[k] for k in depth)
    return SearchResult(predictor.untie(counts), view.predict(counts).total_ms, predictor.predict({}).total_ms,
                        objective, rounds, time.perf_counter() - started, depth)


def _check_smallest(predictor: TablePredictor, options: dict[str, list[int]], unit_sets: list[list[frozenset[str]]],
                    by_key: dict[str, StructuralOption], budget_ms: float, min_keep: float) -> None:
    """PlanError unless the smallest model (every group at its minimum, each unit at its cheapest
    option set there) is predicted within budget."""
    smallest = {gid: counts[0] for gid, counts in options.items()}
    depth = frozenset().union(*(min(sets, key=lambda chosen: _unit_ms(predictor, by_key, sets, chosen, smallest))
                                for sets in unit_sets))
    predicted = predictor.with_depth(depth).predict(smallest).total_ms
    if predicted > budget_ms:
        raise PlanError(f"latency budget {budget_ms:.3g} ms cannot be met: the smallest model this search allows "
                        f"is predicted at {predicted:.3g} ms (every group at its minimum, --min-keep {min_keep}; "
                        f"{len(depth)} depth options taken)")


def _round(predictor: TablePredictor, options: dict[str, list[int]], values: dict[str, list[float]],
           unit_sets: list[list[frozenset[str]]], unit_values: list[list[float]], by_key: dict[str, StructuralOption],
           counts: dict[str, int], depth: frozenset[str], budget_ms: float
           ) -> tuple[dict[str, int], frozenset[str]] | None:
    view = predictor.with_depth(depth)
    ids = list(options)
    group_costs = [view.group_costs(counts, gid, options[gid]) for gid in ids]
    unit_costs = [[_unit_ms(predictor, by_key, sets, chosen, counts) for chosen in sets] for sets in unit_sets]
    current_units = [next(i for i, s in enumerate(sets) if s == depth & frozenset().union(*sets))
                     for sets in unit_sets]
    classes = group_costs + unit_costs
    current = [options[gid].index(counts[gid]) for gid in ids] + current_units
    fixed = view.predict(counts).total_ms - sum(c[i] for c, i in zip(classes, current, strict=True))
    floors = [min(c) for c in classes]
    capacity = budget_ms - fixed - sum(floors)
    if capacity <= 0:
        return None
    picks = knapsack.solve([values[gid] for gid in ids] + unit_values,
                           [[x - floor for x in c] for c, floor in zip(classes, floors, strict=True)], capacity,
                           capacity / GRID)
    if picks is None:
        return None
    new_counts = {gid: options[gid][i] for gid, i in zip(ids, picks, strict=False)}
    chosen = frozenset().union(*(sets[i] for sets, i in zip(unit_sets, picks[len(ids):], strict=True)))
    return new_counts, chosen


def _unit_ms(predictor: TablePredictor, by_key: dict[str, StructuralOption], sets: list[frozenset[str]],
             chosen: frozenset[str], counts: dict[str, int]) -> float:
    """The time of a unit's layers with ``chosen`` taken, at ``counts`` (with what measured rounds taught of
    those options, ``cost.correction``)."""
    involved = frozenset().union(*(by_key[k].removes for s in sets for k in s))
    removed = frozenset().union(*(by_key[k].removes for k in chosen))
    base = {layer.name: layer for layer in predictor.layers}
    layers: list[Layer] = [base[name] for name in involved - removed if name in base]
    layers += [layer for k in chosen for layer in by_key[k].adds]
    return predictor.layers_cost(layers, counts) + predictor.option_ms(chosen)
