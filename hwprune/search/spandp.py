"""The span dynamic program of Efficient Depth Compression (ICML'23) and LayerMerge (ICML'24).

A chain of layers is numbered by the activation positions between them, 0 .. n. Cutting it into
consecutive spans ``(start, end)`` decides everything: each span becomes one merged layer (the
activations strictly inside it removed), with a latency ``T(start, end)`` (a measured table, or
a latency model) and a value ``I(start, end)`` (minus its fidelity cost; 0 for a single layer).
With latency discretised into steps::

    D[end][b] = max over start < end of  D[start][b - ceil(T(start, end) / step)] + I(start, end)

and ``D[0][b] = 0``. The answer is ``D[n][budget / step]``; costs round up, so the chosen cut's
summed latency is within the budget. Exact for the rounded costs, O(n^2 x budget / step),
vectorised over the budget with numpy. ``search.joint`` solves the same choice jointly with width
on a whole model; this is the DP on one chain, as the papers run it on a span table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Cut:
    spans: list[tuple[int, int]]
    latency: float  # the chosen spans' summed (unrounded) latency
    value: float


def span_dp(times: Mapping[tuple[int, int], float], values: Mapping[tuple[int, int], float], n: int,
            budget: float, bins: int = 2000) -> Cut | None:
    """The cut of positions 0..n into spans in ``times`` maximising the summed ``values`` (missing:
    0) with summed time <= ``budget``; None if no cut fits."""
    step = budget / bins
    best = np.full((n + 1, bins + 1), -np.inf)
    best[0, :] = 0.0
    choice = np.full((n + 1, bins + 1), -1, dtype=np.int64)
    by_end: dict[int, list[tuple[int, float, float]]] = {}
    for (start, end), ms in times.items():
        by_end.setdefault(end, []).append((start, ms, values.get((start, end), 0.0)))
    for end in range(1, n + 1):
        for start, ms, value in by_end.get(end, []):
            shift = math.ceil(ms / step - 1e-9)
            if shift > bins:
                continue
            candidate = np.full(bins + 1, -np.inf)
            candidate[shift:] = best[start, :bins + 1 - shift] + value
            better = candidate > best[end]
            best[end, better] = candidate[better]
            choice[end, better] = start
    if not np.isfinite(best[n, bins]):
        return None
    spans, end, b = [], n, bins
    while end > 0:
        start = int(choice[end, b])
        spans.append((start, end))
        b -= math.ceil(times[(start, end)] / step - 1e-9)
        end = start
    spans.reverse()
    return Cut(spans, sum(times[s] for s in spans), float(best[n, bins]))
