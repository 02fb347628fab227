"""onnxruntime on this host's CPU: fixed intra-op threads and graph optimisation level per target."""

from __future__ import annotations

import platform
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from hwprune.errors import DeviceError
from hwprune.runtime.base import Runner, Runtime, host_fingerprint, package_version
from hwprune.runtime.timing import Timing, time_runs

OPT_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")
VERIFY_SETTINGS = (1, "ORT_ENABLE_ALL")  # what numerical verification runs with, whatever the target


def make_session(model: bytes | str | Path, threads: int, optimization_level: str):
    """An onnxruntime CPU session with the given intra-op threads and graph optimisation level."""
    import onnxruntime as ort

    if optimization_level not in OPT_LEVELS:
        raise DeviceError(f"graph_optimization_level {optimization_level!r}: use one of {', '.join(OPT_LEVELS)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, optimization_level)
    options.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


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


class SessionRunner(Runner):
    """A session of one file, opened by ``open_session``; suspended, it lets the session go (its weights and
    their prepacked copies: 2 GB for a 0.5B model) and opens it again on the next run."""

    def __init__(self, open_session: Callable[[], object]):
        self.open_session = open_session
        self.session = open_session()
        self.feeds = random_feeds(self.session)
        self.input_shapes = [tuple(i.shape) for i in self.session.get_inputs()]

    def run(self) -> None:
        if self.session is None:
            self.session = self.open_session()
        self.session.run(None, self.feeds)

    def suspend(self) -> None:
        self.session = None

    def close(self) -> None:
        self.session = None


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    method = {"warmup": 3, "min_runs": 10, "min_seconds": 0.1, "statistic": "median of timed session.run calls"}

    @property
    def settings(self) -> tuple[int, str]:
        """Intra-op threads and graph optimisation level the target is measured with."""
        return self.target.threads or 1, self.target.graph_optimization_level or "ORT_ENABLE_ALL"

    def unavailable_reason(self) -> str | None:
        return None if package_version("onnxruntime") is not None else "onnxruntime is not installed"

    def provenance(self) -> dict:
        threads, level = self.settings
        return {"target": self.target.name, "runtime": "onnxruntime", "runtime_version": package_version("onnxruntime"),
                "threads": threads, "graph_optimization_level": level, "host": host_fingerprint()}

    def fingerprint(self) -> dict:
        return {**self.provenance(), "providers": ["CPUExecutionProvider"], "torch": package_version("torch"),
                "python": platform.python_version()}

    def measurement(self) -> dict:
        threads, level = self.settings
        return {"runtime": "onnxruntime CPUExecutionProvider", "threads": threads, "graph_optimization_level": level,
                "method": "interleaved A/B rounds of 5 runs; speedup = 1 / median over rounds of "
                          "(pruned round median / baseline round median)"}

    def session(self, model: bytes | str | Path):
        return make_session(model, *self.settings)

    def load(self, model: Path) -> Runner:
        return SessionRunner(partial(self.session, model))

    def time_graph(self, graph: bytes | Path, shape: tuple[int, ...], calls: int | None = None) -> Timing:
        if self.target.default_dtype != "fp32":
            raise DeviceError(f"target {self.target.name}: onnxruntime CPU profiling times fp32, not "
                              f"{self.target.default_dtype}")
        runner = SessionRunner(partial(self.session, graph))
        return time_runs(runner.run, self.method["warmup"], calls or self.method["min_runs"],
                         self.method["min_seconds"])
