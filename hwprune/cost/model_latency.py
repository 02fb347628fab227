"""A whole model's cost model on a target: the measured table it reads, and its predictor.

Measuring (profiling op signatures and whole-model anchors) is ``hwprune.pipeline.profiling``'s job; this
module only opens tables and predicts from them, or from the analytic model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hwprune.cost.layers import Layer, model_layers
from hwprune.cost.lut import LatencyTable, LutError, load_table, new_table
from hwprune.cost.predictor import Anchor, TablePredictor
from hwprune.cost.space import channel_choices, profile_signatures
from hwprune.cost.sparse import SparsityCheck, SparsityMode, not_offered, sparse_options, worthwhile
from hwprune.cost.structural import StructuralOption, depth_options
from hwprune.errors import HwpruneError
from hwprune.graph.analyze import Analysis
from hwprune.graph.spans import depth_candidates
from hwprune.io import cache_dir
from hwprune.runtime import runtime_for
from hwprune.runtime.timing import Timing
from hwprune.targets import Target

# The uniformly pruned anchors keep about these fractions of every prunable group.
ANCHOR_FRACTIONS = (0.5, 0.25)
# A merged conv the target's analytic model predicts this much slower than its parts is not offered
# (nor profiled): merging trades FLOPs for layers, which pays only where layers cost more than FLOPs.
MERGE_SLOWDOWN = 1.25


def default_table_path(target: Target, where: str | None = None) -> Path:
    """Where measured tables live: $HWPRUNE_CACHE, else ~/.cache/hwprune (one file per target, and
    per device where it was measured on one over SSH)."""
    return cache_dir() / "latency" / f"{target.name}-{target.runtime}{'@' + where if where else ''}.json"


def open_table(target: Target, path: Path | None = None, create: bool = False) -> tuple[LatencyTable, Path]:
    """The target's table measured on this host, checked against this host's settings; a fresh one
    with ``create``."""
    runtime = runtime_for(target)
    runtime.require("profile on the device, or use the analytic model (hwprune latency without --measure)")
    path = path or default_table_path(target, runtime.where)
    expected = runtime.provenance()
    if path.exists():
        return load_table(path, expected), path
    if not create:
        raise LutError(f"{path}: no latency table for target {target.name}; run hwprune profile first")
    return new_table(expected, runtime.method), path


def model_key(spec: str, example_input_shape: tuple[int, ...]) -> str:
    return f"{spec}|{'x'.join(str(d) for d in example_input_shape)}"


def anchor_key(key: str, fraction: float) -> str:
    return f"{key}|keep={fraction}"


def anchor_counts(analysis: Analysis, alignment: int, fraction: float) -> dict[str, int]:
    """Per prunable group, the allowed keep count nearest ``fraction`` of its channels."""
    return {g.id: min(channel_choices(g, alignment), key=lambda c: abs(c - fraction * g.channels))
            for g in analysis.prunable()}


def depth_choices(analysis: Analysis, layers: list[Layer], target: Target) -> list[StructuralOption]:
    """The model's depth options worth pricing on ``target``: every droppable block, and every span
    whose merged conv the analytic model does not predict ``MERGE_SLOWDOWN`` times slower than its
    convolutions at full width."""
    from hwprune.cost.analytic import predict_ms

    by_name = {layer.name: layer for layer in layers}
    kept = []
    for option in depth_options(analysis, depth_candidates(analysis.model, analysis.capture.example_input), layers):
        if option.adds:
            parts = sum(predict_ms(by_name[name].signature, target) for name in option.removes)
            if predict_ms(option.adds[0].signature, target) > MERGE_SLOWDOWN * parts:
                continue
        kept.append(option)
    return kept


def analytic_predictor(analysis: Analysis, target: Target, sparsity: SparsityMode | None = None) -> TablePredictor:
    """A predictor over analytic per-op latencies at the target's default dtype (no whole-model
    calibration: nothing was measured)."""
    layers = model_layers(analysis, target.default_dtype)
    sparse = sparse_options(layers, target, sparsity, measured=False)
    options = depth_choices(analysis, layers, target) + sparse
    predictor = TablePredictor(layers, analytic_table(analysis, target, options), options=options)
    return priced_sparsity(predictor, sparse, sparsity, target, measured=False)


def priced_sparsity(predictor: TablePredictor, sparse: Sequence[StructuralOption], mode: SparsityMode | None,
                    target: Target, measured: bool) -> TablePredictor:
    """``predictor`` with only the sparse options worth taking (``cost.sparse.worthwhile``) and
    the check that says why, as ``predictor.sparsity``."""
    priced = [o for o in sparse if o.key in predictor.options]
    source = "measured" if measured else "predicted"
    by_name = {layer.name: layer for layer in predictor.layers}
    dense_ms, sparse_ms = {}, {}
    for option in priced:
        layer = by_name[option.name]
        dense_ms[layer.name] = predictor.layer_ms(layer, layer.signature.c_in, layer.signature.c_out)[0]
        sparse_ms[option.key] = predictor.layer_ms(option.adds[0], layer.signature.c_in, layer.signature.c_out)[0]
    kept, check = worthwhile(priced, dense_ms, sparse_ms, mode, target, source, measured)
    if sparse and not priced:
        check = SparsityCheck(mode.pattern, "none", len(sparse), [], {}, f"the latency table has no {mode.pattern} "
                              f"entries for this model (compile --sparsity {mode.pattern} on a host that runs the "
                              f"target profiles them)")
    for option in priced:
        if option not in kept:
            del predictor.options[option.key]
    predictor.sparsity = check
    return predictor


def offline_predictor(analysis: Analysis, target: Target, sparsity: SparsityMode | None = None) -> TablePredictor:
    """The cost model of a target this host cannot run: a shipped device-measured table matching the
    target (``cost.shipped``), else the analytic model (conv/linear layers' roofline times;
    other ops are not modelled, so the unpruned prediction is a lower bound). Its ``provenance()``
    says which."""
    from hwprune.cost.shipped import shipped_predictor

    shipped = shipped_predictor(analysis, target)
    if shipped is None:
        return analytic_predictor(analysis, target, sparsity)
    predictor = shipped[0]
    reason = not_offered(sparsity, target, measured=True) or (
        f"the shipped table {shipped[1]['table']} holds dense layers only")
    predictor.sparsity = SparsityCheck(sparsity.pattern if sparsity else None, "none", 0, [], {}, reason)
    return predictor


def host_predictor(analysis: Analysis, target: Target, lut: Path | None = None) -> TablePredictor:
    """The model's cost model as this host has it: the table measured here (``lut``, else the cache)
    where this host runs the target, else the offline one (shipped table or analytic)."""
    if runtime_for(target).unavailable_reason() is None:
        return predictor_for(analysis, open_table(target, lut)[0], target)
    return offline_predictor(analysis, target)


def predictor_for(analysis: Analysis, table: LatencyTable, target: Target, sparsity: SparsityMode | None = None
                  ) -> TablePredictor:
    """A predictor for ``analysis``'s model; needs the model profiled into ``table`` first."""
    key = model_key(analysis.name, tuple(analysis.capture.example_input.shape))
    if key not in table.models:
        raise HwpruneError(f"{analysis.name} has not been profiled on this target; run hwprune profile first")
    anchors = [Anchor({}, table.models[key])]
    for fraction in ANCHOR_FRACTIONS:
        if anchor_key(key, fraction) in table.models:
            anchors.append(Anchor(anchor_counts(analysis, target.channel_alignment, fraction),
                                  table.models[anchor_key(key, fraction)]))
    layers = model_layers(analysis, target.default_dtype)
    sparse = sparse_options(layers, target, sparsity, measured=True)
    predictor = TablePredictor(layers, table, anchors, depth_choices(analysis, layers, target) + sparse)
    return priced_sparsity(predictor, sparse, sparsity, target, measured=True)


def analytic_table(analysis: Analysis, target: Target, options: Sequence[StructuralOption] = ()) -> LatencyTable:
    """Every signature the search needs for this model, predicted by the analytic model.

    Same shape as a measured table, so the same predictor and search run on it; its provenance
    says ``runtime: analytic``, which every report carries.
    """
    from hwprune.cost.analytic import predict_ms

    layers = model_layers(analysis, target.default_dtype)
    groups = {g.id: g for g in analysis.groups}
    table = LatencyTable({"target": target.name, "runtime": "analytic", "device_runtime": target.runtime,
                          "dtype": target.default_dtype, "model": "roofline, hwprune/cost/analytic.py"},
                         call_overhead_ms=0.0)
    for sig in profile_signatures(layers + [layer for o in options for layer in o.adds], groups,
                                  target.channel_alignment):
        ms = predict_ms(sig, target)
        table.put(sig, Timing(ms, ms, ms, 0.0, 1))
    return table
