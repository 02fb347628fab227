"""Measure op signatures on this host and cache them in a lookup table.

Each signature becomes a single-op ONNX graph, timed by the target's runtime (``hwprune.runtime``):
onnxruntime with the target's fixed threads and optimisation level, or a TensorRT engine at the
target's precision timed with CUDA events where TensorRT and a GPU are present. A signature
already in the table is never measured again; a runtime this host lacks stops with a clear error
instead of pretending.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from hwprune.latency.lut import LatencyTable
from hwprune.latency.onnx_ops import identity_model, input_shape, single_op_model
from hwprune.latency.signature import OpSignature
from hwprune.runtime import runtime_for
from hwprune.runtime.kit import OpGraph
from hwprune.targets import Target


def profile(signatures: Iterable[OpSignature], table: LatencyTable, target: Target,
            progress: object | None = None) -> int:
    """Measure every signature missing from ``table``; returns how many were measured."""
    runtime = runtime_for(target)
    runtime.require("profile on the device, or use the analytic model (hwprune latency without --measure)")
    missing = [s for s in signatures if table.get(s) is None]
    if table.call_overhead_ms is None:
        table.call_overhead_ms = runtime.time_graph(identity_model(), (1,), calls=200).median_ms
    task = progress.add_task("profiling", total=len(missing)) if progress is not None and missing else None

    def measured(i: int, timing) -> None:
        table.put(missing[i], timing)
        if task is not None:
            progress.advance(task)

    runtime.time_graphs([OpGraph(sig.key(), partial(single_op_model, sig), input_shape(sig)) for sig in missing],
                        measured)
    return len(missing)
