"""Measure op signatures on this host and cache them in a lookup table.

Each signature becomes a single-op ONNX graph. On an onnxruntime target it is timed with the
target's fixed threads and graph optimisation level: warm-up, then the median of repeated runs.
On a TensorRT target (where TensorRT, cuda-python and a GPU are present) it is built into an
engine with the target's precision and timed with CUDA events, by the same engine code the
compile and the on-device kit use. A signature already in the table is never measured again.
Where TensorRT is missing, profiling stops with a clear error instead of pretending.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from hwprune.errors import HwpruneError
from hwprune.latency.lut import LatencyTable
from hwprune.latency.measure import Timing, make_session, random_feeds, time_session
from hwprune.latency.onnx_ops import identity_model, input_shape, single_op_model
from hwprune.latency.signature import OpSignature
from hwprune.targets import Target

METHOD = {"warmup": 3, "min_runs": 10, "min_seconds": 0.1, "statistic": "median of timed session.run calls"}
TENSORRT_METHOD = {"warmup": 20, "runs": 200, "statistic": "median GPU time of execute_async_v3 (CUDA events)"}


def require_local_runtime(target: Target) -> None:
    """Profiling runs on this host: onnxruntime targets, and TensorRT ones where TensorRT and a GPU are."""
    if target.runtime == "tensorrt":
        from hwprune.export.tensorrt import unavailable_reason

        reason = unavailable_reason()
        if reason is not None:
            raise HwpruneError(
                f"target {target.name} is timed with TensorRT: {reason}; profile on the device or use the analytic "
                "model (hwprune latency without --measure)")
        return
    if target.runtime != "onnxruntime":
        raise HwpruneError(f"target {target.name}: unknown runtime {target.runtime!r}")


def runtime_settings(target: Target) -> tuple[int, str]:
    """The onnxruntime threads and graph optimisation level a target is measured with."""
    return target.threads or 1, target.graph_optimization_level or "ORT_ENABLE_ALL"


def target_session(model: bytes | str | Path, target: Target):
    """An onnxruntime session for ``model`` (bytes or a file) with ``target``'s fixed settings."""
    threads, level = runtime_settings(target)
    return make_session(model if isinstance(model, bytes) else str(model), threads, level)


def profile(signatures: Iterable[OpSignature], table: LatencyTable, target: Target,
            progress: object | None = None) -> int:
    """Measure every signature missing from ``table``; returns how many were measured."""
    require_local_runtime(target)
    missing = [s for s in signatures if table.get(s) is None]
    time_graph = _graph_timer(target)
    if table.call_overhead_ms is None:
        table.call_overhead_ms = time_graph(identity_model(), (1,), calls=200).median_ms
    task = progress.add_task("profiling", total=len(missing)) if progress is not None and missing else None
    for sig in missing:
        table.put(sig, time_graph(single_op_model(sig), input_shape(sig)))
        if task is not None:
            progress.advance(task)
    return len(missing)


def _graph_timer(target: Target) -> Callable[..., Timing]:
    """A function timing one serialized ONNX graph (input ``x`` of the given shape) on ``target``'s
    runtime here."""
    if target.runtime == "tensorrt":
        def time_on_tensorrt(graph: bytes, shape: tuple[int, ...], calls: int = TENSORRT_METHOD["runs"]) -> Timing:
            with tempfile.TemporaryDirectory(prefix="hwprune-trt-") as tmp:
                path = Path(tmp) / "op.onnx"
                path.write_bytes(graph)
                return time_engine_of(path, "x", shape, target, calls)

        return time_on_tensorrt
    if target.default_dtype != "fp32":
        raise HwpruneError(f"target {target.name}: onnxruntime CPU profiling times fp32, not {target.default_dtype}")

    def time_on_onnxruntime(graph: bytes, _shape: tuple[int, ...], calls: int = METHOD["min_runs"]) -> Timing:
        session = target_session(graph, target)
        return time_session(session, random_feeds(session), METHOD["warmup"], calls, METHOD["min_seconds"])

    return time_on_onnxruntime


def time_engine_of(onnx_path: Path, input_name: str, shape: tuple[int, ...], target: Target,
                   runs: int = TENSORRT_METHOD["runs"]) -> Timing:
    """Build an ONNX file into a TensorRT engine for ``target`` (reusing the target's timing cache
    in hwprune's cache folder) and time it with CUDA events."""
    from hwprune.export.tensorrt import build_engine, engine_config, time_engine
    from hwprune.latency.model_latency import default_table_path

    with tempfile.TemporaryDirectory(prefix="hwprune-trt-") as tmp:
        cache = default_table_path(target).with_suffix(".timing.cache")
        cache.parent.mkdir(parents=True, exist_ok=True)
        config = engine_config(target, onnx_path, Path(tmp) / "model.engine", shape, input_name=input_name,
                               timing_cache=cache)
        return time_engine(build_engine(config), shape, TENSORRT_METHOD["warmup"], runs)
