"""Measuring a model on a target: its op signatures into a latency table, and whole models
(exported to ONNX, then timed by the target's runtime) as the predictor's anchors.

It sits above latency/ (which only reads tables and predicts) and export/ (which writes ONNX),
so that neither imports the other; ``hwprune profile``, ``hwprune latency --measure`` and
compile call it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwprune.cost.layers import Layer, model_layers
from hwprune.cost.lut import LatencyTable
from hwprune.cost.model_latency import ANCHOR_FRACTIONS, anchor_counts, anchor_key, depth_choices, model_key
from hwprune.cost.op_timing import MODEL_CALLS, op_graph, profile, profile_pairs
from hwprune.cost.signature import OpSignature
from hwprune.cost.space import Sweep, profile_signatures, sweeps
from hwprune.cost.sparse import SparsityMode, sparse_options
from hwprune.export.onnx_export import ExportStyle, export_onnx
from hwprune.graph.analyze import Analysis
from hwprune.runtime import runtime_for
from hwprune.runtime.kit import OpGraph
from hwprune.runtime.timing import Timing
from hwprune.targets import Target
from hwprune.transform.prune import leading_channels, pruned_copy


def measure_model(model: nn.Module, example_input: torch.Tensor, target: Target, runs: int = 30) -> Timing:
    """Time ``model`` on this host with the target's runtime: its ONNX export (onnxruntime, TensorRT) or the
    module itself (torch)."""
    runtime = runtime_for(target)
    with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
        onnx = export_onnx(model, example_input, Path(tmp) / "model.onnx")
        runner = runtime.load_model(model, (example_input,), onnx)
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
    it misses), or at ``every_width``; the whole models ride with the first pass, so a remote device is
    reached twice. The N:M signatures at full width, which decide whether N:M is offered at all, are timed
    against their dense twins alternately (``cost.op_timing.profile_pairs``)."""
    x = analysis.capture.example_input
    with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
        passes = _passes(analysis, target, table, sparsity, every_width, Path(tmp))
        models = [OpGraph(name, lambda path=path: path, tuple(x.shape), MODEL_CALLS) for name, path in passes.models]
        measured = profile(passes.first, table, target, progress, models)
    measured += profile(passes.second(), table, target, progress)
    return measured + profile_pairs(passes.paired, table, target)


@dataclass
class Passes:
    """What profiling a model times: the first pass's signatures, the second pass's (read from the first's
    results once they are in the table), the N:M signatures timed in pairs, and the whole models the
    table lacks (name, exported file)."""

    first: list[OpSignature]
    second: Callable[[], list[OpSignature]]
    paired: list[OpSignature]
    models: list[tuple[str, Path]]


def _passes(analysis: Analysis, target: Target, table: LatencyTable, sparsity: SparsityMode | None,
            every_width: bool, folder: Path) -> Passes:
    alignment = target.channel_alignment
    layers, paired = _layers(analysis, target, sparsity)
    timed_in_pairs = {s.key() for s in paired}
    groups = {g.id: g for g in analysis.groups}
    axes = [] if every_width else sweeps(layers, groups, alignment)
    first = (profile_signatures(layers, groups, alignment) if every_width
             else [s for sweep in axes for s in sweep.first_pass()])

    def second() -> list[OpSignature]:
        return _unique([s for sweep in axes for s in sweep.second_pass(_axis_ms(table, sweep))], timed_in_pairs)

    x = analysis.capture.example_input
    key = model_key(analysis.name, tuple(x.shape))
    wanted = [(key, None)] + [(anchor_key(key, f), anchor_counts(analysis, alignment, f)) for f in ANCHOR_FRACTIONS]
    models, style = [], ExportStyle.of(analysis.model)  # exported as the compile's baseline will be
    for i, (name, counts) in enumerate(wanted):
        if name in table.models or counts == {}:
            continue
        model = analysis.model if counts is None else _leading(analysis, counts)
        models.append((name, export_onnx(model, x, folder / f"model-{i}.onnx", style=style)))
    return Passes(_unique(first, timed_in_pairs), second, paired, models)


def export_ops(analysis: Analysis, target: Target, folder: Path, table: LatencyTable,
               sparsity: SparsityMode | None = None) -> tuple[int, int, str]:
    """What ``profile_model`` would time next, written to ``folder`` with a manifest for
    ``export/profile_ops.py`` on the device: the first pass (the N:M signatures with it) and the whole
    models where ``table`` (what the device measured so far) lacks them, else the second pass; so two
    round trips profile a model. Returns (ops, models, which pass)."""
    from hwprune.cost.onnx_ops import identity_model
    from hwprune.runtime.kit import write_ops

    with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
        passes = _passes(analysis, target, table, sparsity, False, Path(tmp))
        missing = [s for s in passes.first + passes.paired if table.get(s) is None]
        which = "first" if missing or passes.models else "second"
        if which == "second":
            missing = [s for s in passes.second() if table.get(s) is None]
        ops = [op_graph(s) for s in missing]
        write_ops(folder, target.name, ops, passes.models, OpGraph("identity", identity_model, (1,), 200))
    return len(ops), len(passes.models), which


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
    return pruned_copy(analysis, {gid: leading_channels(analysis.group(gid), n) for gid, n in counts.items()})
