"""Latency of whole models on a target: profile their layers, measure them, predict them.

This is the library behind ``hwprune profile`` and ``hwprune latency``; the CLI only parses.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.export.onnx_export import export_onnx
from hwprune.graph.analyze import Analysis, analyze
from hwprune.latency.layers import model_layers
from hwprune.latency.lut import (
    LatencyTable,
    LutError,
    host_fingerprint,
    load_table,
    new_table,
    onnxruntime_provenance,
)
from hwprune.latency.measure import Timing, random_feeds, time_session
from hwprune.latency.predictor import Anchor, Prediction, TablePredictor
from hwprune.latency.profiler import (
    METHOD,
    TENSORRT_METHOD,
    profile,
    require_local_runtime,
    runtime_settings,
    target_session,
    time_engine_of,
)
from hwprune.latency.space import channel_choices, profile_signatures
from hwprune.targets import Target
from hwprune.transform.prune import leading_channels, prune

# The uniformly pruned anchors keep about these fractions of every prunable group.
ANCHOR_FRACTIONS = (0.5, 0.25)


def expected_provenance(target: Target) -> dict:
    """The settings a table for ``target`` must have been measured under on this host."""
    if target.runtime == "tensorrt":
        import tensorrt

        from hwprune.environment import fingerprint

        gpu = fingerprint(target).get("gpu")
        return {"target": target.name, "runtime": "tensorrt", "runtime_version": tensorrt.__version__,
                "threads": None, "graph_optimization_level": None,
                "host": {**host_fingerprint(), "gpu": gpu, "dtype": target.default_dtype}}
    threads, level = runtime_settings(target)
    return onnxruntime_provenance(target.name, threads, level)


def default_table_path(target: Target) -> Path:
    """Where measured tables live: $HWPRUNE_CACHE, else ~/.cache/hwprune (one file per target)."""
    root = Path(os.environ.get("HWPRUNE_CACHE", Path.home() / ".cache" / "hwprune"))
    return root / "latency" / f"{target.name}-{target.runtime}.json"


def open_table(target: Target, path: Path | None = None, create: bool = False) -> tuple[LatencyTable, Path]:
    """The target's table, checked against this host's settings; a fresh one with ``create``."""
    require_local_runtime(target)
    path = path or default_table_path(target)
    expected = expected_provenance(target)
    if path.exists():
        return load_table(path, expected), path
    if not create:
        raise LutError(f"{path}: no latency table for target {target.name}; run hwprune profile first")
    return new_table(expected, TENSORRT_METHOD if target.runtime == "tensorrt" else METHOD), path


def model_key(spec: str, example_input: torch.Tensor) -> str:
    return f"{spec}|{'x'.join(str(d) for d in example_input.shape)}"


def measure_model(model: nn.Module, example_input: torch.Tensor, target: Target, runs: int = 30) -> Timing:
    """Export to a temporary ONNX file and time it on this host with the target's settings."""
    if target.runtime == "tensorrt":
        with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
            path = export_onnx(model, example_input, Path(tmp) / "model.onnx")
            return time_engine_of(path, "input", tuple(example_input.shape), target)
    with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
        session = target_session(export_onnx(model, example_input, Path(tmp) / "model.onnx"), target)
        return time_session(session, random_feeds(session), warmup=5, min_runs=runs, min_seconds=0.5)


def anchor_counts(analysis: Analysis, alignment: int, fraction: float) -> dict[str, int]:
    """Per prunable group, the allowed keep count nearest ``fraction`` of its channels."""
    return {g.id: min(channel_choices(g, alignment), key=lambda c: abs(c - fraction * g.channels))
            for g in analysis.prunable()}


def pruned_copy(analysis: Analysis, counts: dict[str, int]) -> nn.Module:
    """A copy of the analysed model with the leading ``counts[group]`` channels of each group kept."""
    fresh = analyze(copy.deepcopy(analysis.model), analysis.capture.example_input, analysis.name, strict=False)
    return prune(fresh, {gid: leading_channels(fresh.group(gid), n) for gid, n in counts.items()})


def profile_model(analysis: Analysis, target: Target, table: LatencyTable, progress: object | None = None) -> int:
    """Measure every signature the search may need for this model, and the whole model unpruned and
    uniformly pruned at each of ``ANCHOR_FRACTIONS`` (the predictor's anchors); returns how many
    measurements were new."""
    alignment = target.channel_alignment
    groups = {g.id: g for g in analysis.groups}
    signatures = profile_signatures(model_layers(analysis, target.default_dtype), groups, alignment)
    measured = profile(signatures, table, target, progress)
    key = model_key(analysis.name, analysis.capture.example_input)
    x = analysis.capture.example_input
    if key not in table.models:
        table.models[key] = measure_model(analysis.model, x, target).median_ms
        measured += 1
    for fraction in ANCHOR_FRACTIONS:
        counts = anchor_counts(analysis, alignment, fraction)
        if counts and _anchor_key(key, fraction) not in table.models:
            table.models[_anchor_key(key, fraction)] = measure_model(pruned_copy(analysis, counts), x,
                                                                     target).median_ms
            measured += 1
    return measured


def _anchor_key(key: str, fraction: float) -> str:
    return f"{key}|keep={fraction}"


def analytic_predictor(analysis: Analysis, target: Target) -> TablePredictor:
    """A predictor over analytic per-op latencies at the target's default dtype (no whole-model
    calibration: nothing was measured)."""
    return TablePredictor(model_layers(analysis, target.default_dtype), analytic_table(analysis, target))


def predict_analytic(analysis: Analysis, target: Target) -> Prediction:
    """The unpruned model's analytic prediction: the sum of its conv/linear layers' roofline times.

    Ops other than conv/linear are not modelled, so this is a lower bound on the layers' part.
    """
    prediction = analytic_predictor(analysis, target).predict({})
    return Prediction(prediction.total_ms, prediction.layers_ms, 0.0, "analytic")


def predictor_for(analysis: Analysis, table: LatencyTable, target: Target) -> TablePredictor:
    """A predictor for ``analysis``'s model; needs the model profiled into ``table`` first."""
    key = model_key(analysis.name, analysis.capture.example_input)
    if key not in table.models:
        raise HwpruneError(f"{analysis.name} has not been profiled on this target; run hwprune profile first")
    anchors = [Anchor({}, table.models[key])]
    for fraction in ANCHOR_FRACTIONS:
        if _anchor_key(key, fraction) in table.models:
            anchors.append(Anchor(anchor_counts(analysis, target.channel_alignment, fraction),
                                  table.models[_anchor_key(key, fraction)]))
    return TablePredictor(model_layers(analysis, target.default_dtype), table, anchors)


def analytic_table(analysis: Analysis, target: Target) -> LatencyTable:
    """Every signature the search needs for this model, predicted by the analytic model.

    Same shape as a measured table, so the same predictor and search run on it; its provenance
    says ``runtime: analytic``, which every report carries.
    """
    from hwprune.latency.analytic import predict_ms

    layers = model_layers(analysis, target.default_dtype)
    groups = {g.id: g for g in analysis.groups}
    table = LatencyTable({"target": target.name, "runtime": "analytic", "device_runtime": target.runtime,
                          "dtype": target.default_dtype, "model": "roofline, hwprune/latency/analytic.py"},
                         call_overhead_ms=0.0)
    for sig in profile_signatures(layers, groups, target.channel_alignment):
        ms = predict_ms(sig, target)
        table.put(sig, Timing(ms, ms, ms, 0.0, 1))
    return table
