"""Measure op signatures on this host with onnxruntime and cache them in a lookup table.

Each signature becomes a single-op ONNX graph, timed with the target's fixed threads and graph
optimisation level: warm-up, then the median of repeated runs. A signature already in the table
is never measured again. TensorRT profiling needs TensorRT and a GPU; without them it stops with
a clear error instead of pretending.
"""

from __future__ import annotations

from collections.abc import Iterable

from hwprune.errors import HwpruneError
from hwprune.latency.lut import LatencyTable
from hwprune.latency.measure import make_session, random_feeds, time_session
from hwprune.latency.onnx_ops import identity_model, single_op_model
from hwprune.latency.signature import OpSignature
from hwprune.targets import Target

METHOD = {"warmup": 3, "min_runs": 10, "min_seconds": 0.1, "statistic": "median of timed session.run calls"}


def require_local_runtime(target: Target) -> None:
    """Profiling runs on this host: onnxruntime targets only, TensorRT only where it imports."""
    if target.runtime == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise HwpruneError(
                f"target {target.name} is timed with TensorRT, which is not installed here; profile on the device "
                "(pip install 'hwprune[trt]') or use the analytic model (hwprune latency without --measure)") from None
        raise HwpruneError(f"target {target.name}: TensorRT profiling is not implemented yet")
    if target.runtime != "onnxruntime":
        raise HwpruneError(f"target {target.name}: unknown runtime {target.runtime!r}")


def runtime_settings(target: Target) -> tuple[int, str]:
    """The onnxruntime threads and graph optimisation level a target is measured with."""
    return target.threads or 1, target.graph_optimization_level or "ORT_ENABLE_ALL"


def profile(signatures: Iterable[OpSignature], table: LatencyTable, target: Target,
            progress: object | None = None) -> int:
    """Measure every signature missing from ``table``; returns how many were measured."""
    require_local_runtime(target)
    missing = [s for s in signatures if table.get(s) is None]
    threads, level = runtime_settings(target)
    if table.call_overhead_ms is None:
        session = make_session(identity_model(), threads, level)
        table.call_overhead_ms = time_session(session, random_feeds(session), 10, 200, 0.2).median_ms
    task = progress.add_task("profiling", total=len(missing)) if progress is not None and missing else None
    for sig in missing:
        session = make_session(single_op_model(sig), threads, level)
        table.put(sig, time_session(session, random_feeds(session), METHOD["warmup"], METHOD["min_runs"],
                                    METHOD["min_seconds"]))
        if task is not None:
            progress.advance(task)
    return len(missing)
