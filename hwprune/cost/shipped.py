"""Latency tables measured on real devices and shipped with hwprune (``latency_models/``).

The cost model for a target is, in order: this host's own measured table (the user cache), a
shipped table, the analytic model. A shipped table was measured on someone else's device, so it is
chosen by the *target's* settings, never by this host: its provenance names the device profile
(``device``, e.g. ``rtx-2080ti``, or the exact ``target``), the runtime, the precision and the
batch it was measured at. It applies to a target whose name is one of those two, whose runtime and
default dtype match, and to a model whose example input has that batch; and only when it holds at
least ``MIN_MEASURED`` of the model's unpruned layers, because a table that measured few of them
would be an analytic prediction wearing a measured label.

A shipped table holds unpruned layers, but the search asks for other widths. Each entry is a
layer timed alone, so it is two parts: the measuring harness's fixed cost per timed call
(``per_call_ms`` in the table's provenance, fitted where the table was made) and the op itself.
Every signature the predictor needs and the table lacks is filled as that fixed cost plus the
analytic model's time scaled by the layer's measured op part / analytic time at full width: each
measured layer anchors its own width sweep, and the analytic model gives only the shape of the sweep
(its alignment staircase and slope). A layer the table lacks takes the median scale of the measured
layers of its kind (of all measured layers when none is of its kind). Why not scale the whole entry:
on the same device and harness, MobileNetV2-1.0's entries predict MobileNetV2-1.4's layers (and the
reverse, the pruning direction) about three times worse that way, because the fixed cost does not
grow or shrink with width (benchmarks/gpu_analytic_check.py --wider). Filled entries carry
``samples = 0``: they are predictions, and ``load_table`` refuses a file with such entries, so the
filled table can never be saved and reloaded as measured.

This module is the only code that reads ``latency_models/``; benchmarks/make_shipped_table.py
writes it.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from importlib import resources

from hwprune.cost.analytic import op_kind, predict_ms
from hwprune.cost.layers import Layer, model_layers
from hwprune.cost.lut import Entry, LatencyTable, load_table
from hwprune.cost.predictor import TablePredictor
from hwprune.cost.space import profile_signatures
from hwprune.graph.analyze import Analysis
from hwprune.targets import Target

PACKAGE = "hwprune.latency_models"
MIN_MEASURED = 0.9  # share of the model's unpruned layers a table must have measured
# Provenance fields of a shipped table that a report repeats.
REPORTED = ("device", "gpu", "runtime", "runtime_version", "precision", "batch", "statistic", "date", "licence",
            "per_call_ms", "per_call")


def shipped_tables() -> list[tuple[str, LatencyTable]]:
    """Every table in ``latency_models/`` as (file name, table); a corrupt one is a LutError, not skipped."""
    tables = []
    for item in sorted(resources.files(PACKAGE).iterdir(), key=lambda item: item.name):
        if item.name.endswith(".json"):
            with resources.as_file(item) as path:
                tables.append((item.name, load_table(path)))
    return tables


def matches(table: LatencyTable, target: Target, batch: int) -> bool:
    """Whether ``table`` was measured on ``target``'s device and runtime, at its precision and ``batch``."""
    measured = table.provenance
    return (target.name in (measured.get("device"), measured.get("target"))
            and measured.get("runtime") == target.runtime
            and measured.get("precision") == target.default_dtype and measured.get("batch") == batch)


def shipped_predictor(analysis: Analysis, target: Target) -> tuple[TablePredictor, dict] | None:
    """A predictor on the shipped table that matches ``target`` and the model's batch, and the provenance a
    report shows; None when no table matches or none measured most of the model's unpruned layers."""
    batch = int(analysis.capture.example_input.shape[0])
    candidates = [(name, table) for name, table in shipped_tables() if matches(table, target, batch)]
    if not candidates:
        return None
    layers = model_layers(analysis, target.default_dtype)
    scales, name, table = max(((op_scales(table, layers, target), name, table) for name, table in candidates),
                              key=lambda scored: len(scored[0]))
    if len(scales) < MIN_MEASURED * len(layers):
        return None
    filled, count = anchored_table(table, scales, analysis, target, layers)
    provenance = {"source": "shipped", "table": name, **{key: table.provenance.get(key) for key in REPORTED},
                  "measured_layers": len(scales), "filled_analytically": count,
                  "unmeasured_layers": [layer.name for layer in layers if layer.name not in scales],
                  "fill": ("signatures the table lacks (other widths, unmeasured layers): per_call_ms + the analytic "
                           "time x the layer's (measured - per_call_ms) / analytic time at full width (unmeasured "
                           "layers: the median of that scale over the measured layers of their kind)")}
    filled.provenance.update(provenance)
    return TablePredictor(layers, filled), provenance


def anchored_ms(analytic_ms: float, scale: float, per_call_ms: float) -> float:
    """A point the table lacks: the harness's fixed per-call cost plus the analytic time of the op, scaled."""
    return per_call_ms + scale * analytic_ms


def op_scales(table: LatencyTable, layers: list[Layer], target: Target) -> dict[str, float]:
    """Layer name -> (measured - per-call cost) / analytic time at full width, for the layers ``table`` measured
    unpruned; a layer with an epilogue by the entry of its bare layer (a shipped table times layers alone), so
    its epilogue is filled in by the analytic model."""
    per_call = table.provenance["per_call_ms"]
    scales = {}
    for layer in layers:
        bare = replace(layer.signature, epilogue="")
        entry = table.get(bare)
        if entry is not None:
            scales[layer.name] = max(entry.median_ms - per_call, 0.0) / predict_ms(bare, target)
    return scales


def anchored_table(shipped: LatencyTable, scales: dict[str, float], analysis: Analysis, target: Target,
                   layers: list[Layer]) -> tuple[LatencyTable, int]:
    """``shipped`` plus every signature the predictor needs for ``layers``, filled as the module docstring says;
    returns the table and how many signatures were filled."""
    by_kind: dict[str, list[float]] = {}
    for layer in layers:
        if layer.name in scales:
            by_kind.setdefault(op_kind(layer.signature), []).append(scales[layer.name])
    kind_scale = {kind: statistics.median(values) for kind, values in by_kind.items()}
    everywhere = statistics.median(scales.values())
    groups = {group.id: group for group in analysis.groups}
    table = LatencyTable(dict(shipped.provenance), dict(shipped.entries), call_overhead_ms=shipped.call_overhead_ms)
    per_call = shipped.provenance["per_call_ms"]
    filled = 0
    for layer in layers:
        scale = scales.get(layer.name, kind_scale.get(op_kind(layer.signature), everywhere))
        for sig in profile_signatures([layer], groups, target.channel_alignment):
            if table.get(sig) is None:
                ms = anchored_ms(predict_ms(sig, target), scale, per_call)
                table.entries[sig.key()] = Entry(ms, ms, 0)
                filled += 1
    return table, filled
