"""Choose how many channels each prunable group keeps, under a predicted-latency budget.

Objective: the sum over groups of weight x log(retained importance fraction). A signal passes
through the groups one after another, so what survives is roughly the product of what each
keeps; the log makes that a sum (a knapsack value) and never lets one group be starved to buy
width elsewhere. The weight says how much a group matters: its measured sensitivity
(``importance.sensitivity``) when given, else the number of layer inputs and outputs it sizes
(so a residual stream that sizes ten layers is not cut as lightly as a group that sizes two).
The latency side decides where removing channels pays.

Latency is not a sum over groups (a layer's time depends on its input and its output group),
so the search linearises it around the current widths, HALP-style: each group's contribution
is the time of the layers it sizes at each of its allowed counts, every other group held
fixed. The multiple-choice knapsack over those contributions (``knapsack.solve``) is exact
for the linearised problem on its cost grid; the solution is re-predicted with the full
predictor and the linearisation redone around it, a few rounds. A final greedy pass, with
exact one-group deltas, first removes steps while the full prediction is over budget, then
adds steps while it fits, so every returned solution satisfies prediction <= budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from hwprune.cost.predictor import TablePredictor
from hwprune.cost.space import channel_choices
from hwprune.errors import PlanError
from hwprune.graph.analyze import Analysis
from hwprune.importance.scores import Importance, retained
from hwprune.search import knapsack

ROUNDS = 6
GRID = 4000  # knapsack cost cells per budget
BISECTION_STEPS = 20


@dataclass
class SearchResult:
    counts: dict[str, int]
    predicted_ms: float
    baseline_predicted_ms: float
    objective: float
    rounds: int
    seconds: float
    depth: frozenset[str] = frozenset()  # depth options taken (``cost.structural`` keys; search.joint)


def allowed_counts(analysis: Analysis, alignment: int, min_keep: float) -> dict[str, list[int]]:
    """Per prunable group, the counts it may keep: aligned, and at least ``min_keep`` of it."""
    options = {}
    for group in analysis.prunable():
        choices = channel_choices(group, alignment)
        floor = min_keep * group.channels
        options[group.id] = [c for c in choices if c >= floor] or [choices[-1]]
    return options


def tied(options: dict[str, list[int]], values: dict[str, list[float]], ties: dict[str, tuple[str, ...]]
         ) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """The search's classes with each tie (``TablePredictor.tie``) one class: its members' counts (they
    are alike: same channels), its value the sum of theirs (each member keeps its own best channels)."""
    options, values = dict(options), dict(values)
    for tie, members in ties.items():
        present = [m for m in members if m in options]
        if not present:
            continue
        if any(options[m] != options[present[0]] for m in present):
            raise PlanError(f"tie {tie}: its groups allow different counts")
        options[tie] = options[present[0]]
        values[tie] = [sum(values[m][i] for m in present) for i in range(len(options[tie]))]
        for m in present:
            del options[m], values[m]
    return options, values


def search_widths(analysis: Analysis, predictor: TablePredictor, importance: Importance, alignment: int,
                  budget_ms: float, min_keep: float = 0.1, weights: dict[str, float] | None = None) -> SearchResult:
    """Keep counts maximising the objective with predicted latency <= ``budget_ms``."""
    started = time.perf_counter()
    options = allowed_counts(analysis, alignment, min_keep)
    options, values = tied(options, group_values(analysis, predictor, importance, options, weights), predictor.ties)
    _check_feasible(predictor, options, budget_ms, min_keep)
    current = {gid: counts[-1] for gid, counts in options.items()}
    rounds = 0
    while rounds < ROUNDS:
        rounds += 1
        proposal = _knapsack_round(predictor, options, values, current, budget_ms)
        if proposal is None or proposal == current:
            break
        current = proposal
    return _result(predictor, options, values, greedy_fit(predictor, options, values, current, budget_ms), rounds,
                   started)


def uniform_widths(analysis: Analysis, predictor: TablePredictor, importance: Importance, alignment: int,
                   budget_ms: float, min_keep: float = 0.1) -> SearchResult:
    """Every group at the same kept fraction (the largest whose prediction fits, by bisection),
    then the slack that alignment leaves filled greedily: the classic uniform allocation, made
    latency-aware only in where the leftover steps go. A candidate beside ``search_widths``,
    because a per-group weighting can misjudge groups that uniform treats alike."""
    started = time.perf_counter()
    options = allowed_counts(analysis, alignment, min_keep)
    options, values = tied(options, group_values(analysis, predictor, importance, options, None), predictor.ties)
    _check_feasible(predictor, options, budget_ms, min_keep)

    def at(fraction: float) -> dict[str, int]:
        return {gid: max([c for c in counts if c <= fraction * counts[-1]], default=counts[0])
                for gid, counts in options.items()}

    low, high = 0.0, 1.0
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if predictor.predict(at(middle)).total_ms <= budget_ms else (low, middle)
    return _result(predictor, options, values, greedy_fit(predictor, options, values, at(low), budget_ms), 0, started)


def group_values(analysis: Analysis, predictor: TablePredictor, importance: Importance, options: dict[str, list[int]],
            weights: dict[str, float] | None) -> dict[str, list[float]]:
    repeats = {g.id: g.repeat for g in analysis.prunable()}
    weights = weights or {gid: float(n) for gid, n in predictor.layer_sides().items()}
    return {gid: [weights.get(gid, 1.0) * v for v in _log_fractions(importance.scores[gid], counts, repeats[gid])]
            for gid, counts in options.items()}


def _check_feasible(predictor: TablePredictor, options: dict[str, list[int]], budget_ms: float,
                    min_keep: float) -> None:
    smallest = predictor.predict({gid: counts[0] for gid, counts in options.items()}).total_ms
    if smallest > budget_ms:
        raise PlanError(f"latency budget {budget_ms:.3g} ms cannot be met: the smallest model this search allows "
                        f"is predicted at {smallest:.3g} ms (every group at its minimum; --min-keep {min_keep})")


def _result(predictor: TablePredictor, options: dict[str, list[int]], values: dict[str, list[float]],
            counts: dict[str, int], rounds: int, started: float) -> SearchResult:
    objective = sum(values[gid][options[gid].index(n)] for gid, n in counts.items())
    return SearchResult(predictor.untie(counts), predictor.predict(counts).total_ms, predictor.predict({}).total_ms,
                        objective, rounds, time.perf_counter() - started)


def _log_fractions(scores: np.ndarray, counts: list[int], repeat: int) -> list[float]:
    cumulative = retained(scores, repeat)
    total = cumulative[-1]
    return [math.log(max(cumulative[n // repeat] / total, 1e-12)) for n in counts]


def _knapsack_round(predictor: TablePredictor, options: dict[str, list[int]], values: dict[str, list[float]],
                    current: dict[str, int], budget_ms: float) -> dict[str, int] | None:
    """One knapsack over latency contributions linearised at ``current``."""
    ids = list(options)
    costs = {gid: predictor.group_costs(current, gid, options[gid]) for gid in ids}
    now = predictor.predict(current).total_ms
    fixed = now - sum(costs[gid][options[gid].index(current[gid])] for gid in ids)
    floors = {gid: min(costs[gid]) for gid in ids}
    capacity = budget_ms - fixed - sum(floors.values())
    if capacity <= 0:
        return None
    shifted = [[c - floors[gid] for c in costs[gid]] for gid in ids]
    picks = knapsack.solve([values[gid] for gid in ids], shifted, capacity, capacity / GRID)
    if picks is None:
        return None
    return {gid: options[gid][i] for gid, i in zip(ids, picks, strict=True)}


def greedy_fit(predictor: TablePredictor, options: dict[str, list[int]], values: dict[str, list[float]],
                current: dict[str, int], budget_ms: float) -> dict[str, int]:
    """Shrink while over budget (least objective lost per ms saved), then grow while it fits
    (most objective gained per ms added); one-group deltas are exact, so no full re-prediction."""
    current = dict(current)
    total = predictor.predict(current).total_ms
    while total > budget_ms:
        best = None
        for gid, counts in options.items():
            i = counts.index(current[gid])
            if i == 0:
                continue
            before, after = predictor.group_costs(current, gid, [counts[i], counts[i - 1]])
            saved = before - after
            lost = values[gid][i] - values[gid][i - 1]
            rate = lost / saved if saved > 0 else math.inf
            if best is None or rate < best[0]:
                best = (rate, gid, counts[i - 1], saved)
        if best is None:
            break
        _rate, gid, count, saved = best
        current[gid] = count
        total -= saved
    while True:
        best = None
        for gid, counts in options.items():
            i = counts.index(current[gid])
            if i + 1 == len(counts):
                continue
            before, after = predictor.group_costs(current, gid, [counts[i], counts[i + 1]])
            added = after - before
            if total + added > budget_ms:
                continue
            gained = values[gid][i + 1] - values[gid][i]
            rate = gained / added if added > 0 else math.inf
            if best is None or rate > best[0]:
                best = (rate, gid, counts[i + 1], added)
        if best is None:
            break
        _rate, gid, count, added = best
        current[gid] = count
        total += added
    return current
