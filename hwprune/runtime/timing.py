"""Timing statistics and the two ways hwprune times anything: alone, and interleaved (A B A B ...).

On a shared machine one absolute time is not a fact; medians of many runs are, and a ratio of
two models timed in alternating rounds is robust to the machine's drift. Both work on plain
callables, so every runtime times the same way; a ``timer`` says how one call is timed (the wall
clock by default; CUDA events around a queued GPU inference in the torch runtime).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Summary of repeated runs, in milliseconds; ``spread`` is (p90 - p10) / median."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    spread: float
    samples: int

    @classmethod
    def of(cls, times_ms: Sequence[float]) -> Timing:
        data = np.asarray(times_ms, dtype=float)
        median = float(np.median(data))
        p10, p90, p99 = (float(v) for v in np.percentile(data, [10, 90, 99]))
        return cls(median, p90, p99, (p90 - p10) / median if median > 0 else 0.0, len(data))


@dataclass(frozen=True)
class Comparison:
    """Models timed in one interleaved run; ``ratios[i]`` is the median over rounds of
    (model i's round median / model 0's round median), robust to the machine's drift; ``round_ratios[i]``
    are those per-round ratios, the paired samples a verdict pools (``search.verdict``)."""

    timings: list[Timing]
    ratios: list[float]
    ratio_spread: list[float]
    round_ratios: list[list[float]]


Timer = Callable[[Callable[[], object]], float]


def wall_ms(run: Callable[[], object]) -> float:
    """One call of ``run`` on the wall clock, in milliseconds."""
    begin = time.perf_counter()
    run()
    return (time.perf_counter() - begin) * 1e3


def time_runs(run: Callable[[], object], warmup: int = 3, min_runs: int = 10, min_seconds: float = 0.1,
              timer: Timer = wall_ms) -> Timing:
    """Run ``warmup`` times, then at least ``min_runs`` runs and ``min_seconds`` of timed runs."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        times.append(timer(run))
    return Timing.of(times)


def interleave(runs: Sequence[Callable[[], object]], rounds: int = 15, runs_per_round: int = 5, warmup: int = 5,
               min_seconds: float = 0.0, timer: Timer = wall_ms) -> Comparison:
    """A B A B ...: every round runs each model ``runs_per_round`` times, alternating which goes
    first, so slow phases of a shared machine hit all alike."""
    for run in runs:
        for _ in range(warmup):
            run()
    times: list[list[float]] = [[] for _ in runs]
    round_medians: list[list[float]] = [[] for _ in runs]
    started = time.perf_counter()
    done = 0
    while done < rounds or time.perf_counter() - started < min_seconds:
        order = range(len(runs)) if done % 2 == 0 else reversed(range(len(runs)))
        for i in order:
            this_round = [timer(runs[i]) for _ in range(runs_per_round)]
            times[i].extend(this_round)
            round_medians[i].append(float(np.median(this_round)))
        done += 1
    ratios, spreads, pairs = [], [], []
    for medians in round_medians:
        per_round = np.asarray(medians) / np.asarray(round_medians[0])
        p10, p50, p90 = np.percentile(per_round, [10, 50, 90])
        ratios.append(float(p50))
        spreads.append(float((p90 - p10) / p50) if p50 > 0 else 0.0)
        pairs.append([float(r) for r in per_round])
    return Comparison([Timing.of(t) for t in times], ratios, spreads, pairs)
