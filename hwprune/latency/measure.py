"""Timing with onnxruntime: fixed threads and optimisation level, warm-up, medians.

On a shared machine one absolute time is not a fact; medians of many runs are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from hwprune.errors import HwpruneError

OPT_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


@dataclass(frozen=True)
class Timing:
    """Summary of repeated runs, in milliseconds; ``spread`` is (p90 - p10) / median."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    spread: float
    samples: int

    @classmethod
    def of(cls, times_ms: list[float]) -> Timing:
        data = np.asarray(times_ms, dtype=float)
        median = float(np.median(data))
        p10, p90, p99 = (float(v) for v in np.percentile(data, [10, 90, 99]))
        return cls(median, p90, p99, (p90 - p10) / median if median > 0 else 0.0, len(data))


def make_session(model: bytes | str, threads: int, optimization_level: str):
    """An onnxruntime CPU session with the given intra-op threads and graph optimisation level."""
    import onnxruntime as ort

    if optimization_level not in OPT_LEVELS:
        raise HwpruneError(f"graph_optimization_level {optimization_level!r}: use one of {', '.join(OPT_LEVELS)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, optimization_level)
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def random_feeds(session) -> dict[str, np.ndarray]:
    """Random inputs matching the session's (static) input shapes and types."""
    rng = np.random.default_rng(0)
    feeds = {}
    for item in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in item.shape]
        if "int" in item.type:
            feeds[item.name] = rng.integers(0, 2, size=shape, dtype=np.int64)
        else:
            feeds[item.name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


def time_session(session, feeds: dict[str, np.ndarray], warmup: int = 3, min_runs: int = 10,
                 min_seconds: float = 0.1) -> Timing:
    """Run ``warmup`` times, then at least ``min_runs`` runs and ``min_seconds`` of timed runs."""
    for _ in range(warmup):
        session.run(None, feeds)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        begin = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - begin) * 1e3)
    return Timing.of(times)


@dataclass(frozen=True)
class Comparison:
    """Sessions timed in one interleaved run; ``ratios[i]`` is the median over rounds of
    (session i's round median / session 0's round median), robust to the machine's drift."""

    timings: list[Timing]
    ratios: list[float]
    ratio_spread: list[float]


def time_interleaved(sessions: list, feeds: list[dict[str, np.ndarray]], rounds: int = 15, runs_per_round: int = 5,
                     warmup: int = 5, min_seconds: float = 0.0) -> Comparison:
    """A B A B ...: every round runs each session ``runs_per_round`` times, alternating which goes
    first, so slow phases of a shared machine hit both alike."""
    for session, feed in zip(sessions, feeds, strict=True):
        for _ in range(warmup):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    round_medians: list[list[float]] = [[] for _ in sessions]
    started = time.perf_counter()
    done = 0
    while done < rounds or time.perf_counter() - started < min_seconds:
        order = range(len(sessions)) if done % 2 == 0 else reversed(range(len(sessions)))
        for i in order:
            this_round = []
            for _ in range(runs_per_round):
                begin = time.perf_counter()
                sessions[i].run(None, feeds[i])
                this_round.append((time.perf_counter() - begin) * 1e3)
            times[i].extend(this_round)
            round_medians[i].append(float(np.median(this_round)))
        done += 1
    ratios, spreads = [], []
    for medians in round_medians:
        per_round = np.asarray(medians) / np.asarray(round_medians[0])
        p10, p50, p90 = np.percentile(per_round, [10, 50, 90])
        ratios.append(float(p50))
        spreads.append(float((p90 - p10) / p50) if p50 > 0 else 0.0)
    return Comparison([Timing.of(t) for t in times], ratios, spreads)
