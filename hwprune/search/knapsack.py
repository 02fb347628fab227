"""Multiple-choice knapsack: one option per class, maximise total value under a cost budget.

Dynamic programming over classes on a cost grid: costs are rounded *up* to multiples of
``step``, so every returned solution's true total cost is within the budget. The DP is exact for
the rounded costs; against the unrounded problem it can only lose solutions whose total cost
lies within (number of classes x step) of the budget. Time O(classes x options x budget/step),
vectorised over the cost grid with numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def solve(values: Sequence[Sequence[float]], costs: Sequence[Sequence[float]], budget: float,
          step: float) -> list[int] | None:
    """Index of the chosen option per class, or None when even the cheapest options exceed ``budget``.

    Costs must be >= 0 (shift each class by its cheapest option before calling).
    """
    if budget < 0:
        return None
    bins = int(math.floor(budget / step + 1e-9))
    width = bins + 1
    best = np.zeros(width)  # best value using the classes so far with total rounded cost <= b
    choices = []
    for class_values, class_costs in zip(values, costs, strict=True):
        new = np.full(width, -np.inf)
        pick = np.full(width, -1, dtype=np.int64)
        for index, (value, cost) in enumerate(zip(class_values, class_costs, strict=True)):
            if cost < 0:
                raise ValueError("knapsack costs must be non-negative")
            shift = int(math.ceil(cost / step - 1e-9))
            if shift > bins:
                continue
            candidate = np.full(width, -np.inf)
            candidate[shift:] = best[:width - shift] + value
            better = candidate > new
            new[better] = candidate[better]
            pick[better] = index
        best = new
        choices.append(pick)
    if not np.isfinite(best[bins]):
        return None
    solution = []
    b = bins
    for class_costs, pick in zip(reversed(costs), reversed(choices), strict=True):
        index = int(pick[b])
        solution.append(index)
        b -= int(math.ceil(class_costs[index] / step - 1e-9))
    return solution[::-1]
