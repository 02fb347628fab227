"""Measuring a model on a target: its op signatures into a latency table, and whole models
(exported to ONNX, then timed by the target's runtime) as the predictor's anchors.

It sits above latency/ (which only reads tables and predicts) and export/ (which writes ONNX),
so that neither imports the other; ``hwprune profile``, ``hwprune latency --measure`` and
compile call it.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

from hwprune.cost.layers import Layer, model_layers
from hwprune.cost.lut import LatencyTable
from hwprune.cost.model_latency import ANCHOR_FRACTIONS, anchor_counts, anchor_key, depth_choices, model_key
from hwprune.cost.op_timing import profile, profile_pairs
from hwprune.cost.signature import OpSignature
from hwprune.cost.space import Sweep, profile_signatures, sweeps
from hwprune.cost.sparse import SparsityMode, sparse_options
from hwprune.export.onnx_export import export_onnx
from hwprune.graph.analyze import Analysis, analyze
from hwprune.runtime import runtime_for
from hwprune.runtime.timing import Timing
from hwprune.targets import Target
from hwprune.transform.prune import leading_channels, prune


def measure_model(model: nn.Module, example_input: torch.Tensor, target: Target, runs: int = 30) -> Timing:
    """Export to a temporary ONNX file and time it on this host with the target's runtime."""
    runtime = runtime_for(target)
    with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
        runner = runtime.load(export_onnx(model, example_input, Path(tmp) / "model.onnx"))
        try:
            return runtime.time(runner, warmup=5, min_runs=runs, min_seconds=0.5)
        finally:
            runner.close()


def profile_model(analysis: Analysis, target: Target, table: LatencyTable, progress: object | None = None,
                  sparsity: SparsityMode | None = None, every_width: bool = False) -> int:
    """Measure the signatures the search may need for this model (with ``sparsity``, its eligible
    layers' N:M signatures too), and the whole model unpruned and uniformly pruned at each of
    ``ANCHOR_FRACTIONS`` (the predictor's anchors); returns how many measurements were new. Each layer's
    axes are profiled adaptively (``cost.space.Sweep``: a coarse pass, then the stretches the line through
    it misses), or at ``every_width``. The N:M signatures at full width, which decide whether N:M is offered
    at all, are timed against their dense twins alternately (``cost.op_timing.profile_pairs``)."""
    alignment = target.channel_alignment
    layers, paired = _layers(analysis, target, sparsity)
    timed_in_pairs = {s.key() for s in paired}
    groups = {g.id: g for g in analysis.groups}
    axes = [] if every_width else sweeps(layers, groups, alignment)
    first = (profile_signatures(layers, groups, alignment) if every_width
             else [s for sweep in axes for s in sweep.first_pass()])
    measured = profile(_unique(first, timed_in_pairs), table, target, progress)
    fill = [s for sweep in axes for s in sweep.second_pass(_axis_ms(table, sweep))]
    measured += profile(_unique(fill, timed_in_pairs), table, target, progress)
    measured += profile_pairs(paired, table, target)
    x = analysis.capture.example_input
    key = model_key(analysis.name, tuple(x.shape))
    if key not in table.models:
        table.models[key] = measure_model(analysis.model, x, target).median_ms
        measured += 1
    for fraction in ANCHOR_FRACTIONS:
        counts = anchor_counts(analysis, alignment, fraction)
        if counts and anchor_key(key, fraction) not in table.models:
            table.models[anchor_key(key, fraction)] = measure_model(_leading(analysis, counts), x, target).median_ms
            measured += 1
    return measured


def export_ops(analysis: Analysis, target: Target, folder: Path, sparsity: SparsityMode | None = None
               ) -> tuple[int, int]:
    """The single-op graphs and whole models ``profile_model`` would time, written to ``folder`` with
    a manifest for ``export/profile_ops.py`` on the device; (ops, models) written."""
    from functools import partial

    from hwprune.cost.onnx_ops import identity_model, input_shape, single_op_model
    from hwprune.runtime.kit import OpGraph, write_ops

    alignment = target.channel_alignment
    layers, _paired = _layers(analysis, target, sparsity)
    signatures = profile_signatures(layers, {g.id: g for g in analysis.groups}, alignment)
    ops = [OpGraph(s.key(), partial(single_op_model, s), input_shape(s)) for s in signatures]
    x = analysis.capture.example_input
    key = model_key(analysis.name, tuple(x.shape))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
        models = [(key, export_onnx(analysis.model, x, Path(tmp) / "model.onnx"))]
        for fraction in ANCHOR_FRACTIONS:
            counts = anchor_counts(analysis, alignment, fraction)
            if counts:
                models.append((anchor_key(key, fraction),
                               export_onnx(_leading(analysis, counts), x, Path(tmp) / f"keep-{fraction}.onnx")))
        write_ops(folder, target.name, ops, models, OpGraph("identity", identity_model, (1,), 200))
    return len(ops), len(models)


def _layers(analysis: Analysis, target: Target, sparsity: SparsityMode | None
            ) -> tuple[list[Layer], list[OpSignature]]:
    """Every layer the search may price (the model's, merged spans', N:M layers'), and the N:M layers'
    signatures at full width."""
    layers = model_layers(analysis, target.default_dtype)
    sparse = sparse_options(layers, target, sparsity, measured=True)
    added = [layer for option in depth_choices(analysis, layers, target) + sparse for layer in option.adds]
    return layers + added, [option.adds[0].signature for option in sparse]


def _unique(signatures: list[OpSignature], leaving: set[str]) -> list[OpSignature]:
    """``signatures`` without repeats and without those whose keys are in ``leaving``."""
    return [s for key, s in {s.key(): s for s in signatures}.items() if key not in leaving]


def _axis_ms(table: LatencyTable, sweep: Sweep) -> dict[int, float]:
    """What ``table`` holds along ``sweep``: count -> median ms."""
    found = ((count, table.get(sig)) for count, sig in zip(sweep.counts, sweep.signatures, strict=True))
    return {count: entry.median_ms for count, entry in found if entry is not None}


def _leading(analysis: Analysis, counts: dict[str, int]) -> nn.Module:
    """A copy of the analysed model with the leading ``counts[group]`` channels of each group kept
    (which channels go does not change latency)."""
    fresh = analyze(copy.deepcopy(analysis.model), analysis.capture.example_input, analysis.name, strict=False)
    return prune(fresh, {gid: leading_channels(fresh.group(gid), n) for gid, n in counts.items()})
