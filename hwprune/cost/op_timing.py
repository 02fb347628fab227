"""Measure op signatures on this host and cache them in a lookup table.

Each signature becomes a single-op ONNX graph, timed by the target's runtime (``hwprune.runtime``):
onnxruntime with the target's fixed threads and optimisation level, or a TensorRT engine at the
target's precision timed with CUDA events where TensorRT and a GPU are present. A signature
already in the table is never measured again; a runtime this host lacks stops with a clear error
instead of pretending.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import replace
from functools import partial

from hwprune.cost.lut import LatencyTable
from hwprune.cost.onnx_ops import identity_model, input_shape, single_op_model
from hwprune.cost.signature import OpSignature
from hwprune.runtime import runtime_for
from hwprune.runtime.kit import OpGraph
from hwprune.runtime.timing import Timing
from hwprune.targets import Target

MODEL_CALLS = 30  # timed runs of a whole model (a table's ``models``: the predictor's anchors)


def op_graph(sig: OpSignature) -> OpGraph:
    """``sig`` as the graph a runtime times (here, remotely, or in the kit's folder), named by its key."""
    return OpGraph(sig.key(), partial(single_op_model, sig), input_shape(sig))


def profile(signatures: Iterable[OpSignature], table: LatencyTable, target: Target,
            progress: object | None = None, models: Iterable[OpGraph] = ()) -> int:
    """Measure every signature missing from ``table``, and the whole ``models`` (each named by its key in
    ``table.models``) in the same batch: one round trip to a remote device. Returns how many were measured."""
    runtime = runtime_for(target)
    runtime.require("profile on the device, or use the analytic model (hwprune latency without --measure)")
    missing = [s for s in signatures if table.get(s) is None]
    wholes = [m for m in models if m.name not in table.models]
    if table.call_overhead_ms is None:
        table.call_overhead_ms = runtime.time_graph(identity_model(), (1,), calls=200).median_ms
    task = progress.add_task("profiling", total=len(missing)) if progress is not None and missing else None

    def measured(i: int, timing) -> None:
        if i >= len(missing):
            table.models[wholes[i - len(missing)].name] = timing.median_ms
            return
        table.put(missing[i], timing)
        if task is not None:
            progress.advance(task)

    graphs = [op_graph(sig) for sig in missing]
    if graphs or wholes:
        runtime.time_graphs(graphs + wholes, measured)
    return len(missing) + len(wholes)


PAIR_ROUNDS = 5


def profile_pairs(signatures: Iterable[OpSignature], table: LatencyTable, target: Target) -> int:
    """Each N:M signature missing from ``table`` timed against its dense twin, alternately
    (dense, N:M, dense, N:M, ...; ``PAIR_ROUNDS`` each): its entry is the dense twin's entry plus the
    median difference, so what it records is a difference measured side by side, not the drift of a
    noisy machine between two measurements far apart; where the rounds disagree on its sign the
    difference is recorded as none (one-thread onnxruntime here spreads 2-5%, and a tiny op's time
    is mostly the call's). Returns how many were measured."""
    runtime = runtime_for(target)
    missing = [s for s in signatures if table.get(s) is None]
    if missing:
        runtime.require("profile on the device, or use the analytic model (hwprune latency without --measure)")
    for sig in missing:
        dense = replace(sig, sparsity="dense")
        graphs, shape = (single_op_model(dense), single_op_model(sig)), input_shape(sig)
        pairs = [(runtime.time_graph(graphs[0], shape), runtime.time_graph(graphs[1], shape))
                 for _ in range(PAIR_ROUNDS)]
        base = table.get(dense)
        if base is None:
            table.put(dense, Timing.of([a.median_ms for a, _ in pairs]))
            base = table.get(dense)
        differences = [b.median_ms - a.median_ms for a, b in pairs]
        # a difference whose sign the rounds do not agree on is not told apart from none
        consistent = all(d < 0 for d in differences) or all(d > 0 for d in differences)
        difference = statistics.median(differences) if consistent else 0.0
        ms = max(base.median_ms + difference, 1e-6)
        table.put(sig, Timing(ms, base.p90_ms + difference, base.p90_ms + difference, 0.0,
                              sum(b.samples for _, b in pairs)))
    return len(missing)
