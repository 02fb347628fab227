"""N:M sparsity as a per-layer option of the joint search: which layers may take it on a target,
and whether the target's cost model says it is worth anything there.

A sparse option replaces one conv or linear layer by the same layer with an N:M signature
(``OpSignature.sparsity``), sized by the same groups, so the width search prices it at every
width like the merged convs of ``cost.structural``; it conflicts with any merge or drop that removes
the layer. Prices come from where every other price comes from: a measured table (``cpu``: the
profiler times N:M-zeroed single-op graphs; onnxruntime here runs them no faster; ``cuda``: the torch
runtime runs them on PyTorch's semi-structured sparse kernels) or the analytic model (TensorRT targets:
the profile's derated ``[sparsity] layer_speedup``, labelled predicted). Where a table is measured, the
runtime that times it says which layers it would run on dense kernels anyway
(``Runtime.sparse_refusal``: PyTorch's kernels take linear layers of some shapes, on CUDA only); those are
not offered, so no dense time is ever priced as a sparse one.

Modes (``--sparsity``): ``off``; ``auto`` (2:4, only on targets whose profile has sparse tensor
cores and predicts a gain, or whose measured table shows one); ``N:M`` (that pattern priced
wherever the cost model can price it, so ``cpu --sparsity 2:4`` measures it). Either way an
option is offered only where it saves at least ``MIN_SAVING`` of its layer's time at full width:
below that a measured difference is timing noise (one onnxruntime thread spreads 2-5% here).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

from hwprune.cost.layers import Layer
from hwprune.cost.structural import StructuralOption
from hwprune.plan import NMLayer
from hwprune.runtime import Runtime, runtime_for
from hwprune.sparsity.masks import parse_pattern
from hwprune.targets import Target

MIN_SAVING = 0.05


@dataclass(frozen=True)
class SparsityMode:
    """What ``--sparsity`` asked for: a pattern, and whether it was named (not ``auto``)."""

    n: int
    m: int
    explicit: bool

    @property
    def pattern(self) -> str:
        return f"{self.n}:{self.m}"


def parse_mode(text: str) -> SparsityMode | None:
    """``off`` -> None, ``auto`` -> 2:4 where it pays, ``N:M`` -> that pattern; ValueError otherwise."""
    if text == "off":
        return None
    if text == "auto":
        return SparsityMode(2, 4, explicit=False)
    try:
        n, m = parse_pattern(text)
    except ValueError as exc:
        raise ValueError(f"--sparsity: {exc} (or off, auto)") from None
    return SparsityMode(n, m, explicit=True)


def sparse_key(layer: str) -> str:
    return f"sparse:{layer}"


def not_offered(mode: SparsityMode | None, target: Target, measured: bool) -> str | None:
    """Why no layer can take ``mode`` on ``target`` at all, before pricing anything; None if some may.
    ``measured``: priced by this host's runtime, which may refuse the pattern outright."""
    if mode is None:
        return "--sparsity off"
    refused = runtime_for(target).sparse_refusal(mode.pattern) if measured else None
    if refused is not None:
        return f"target {target.name}: {refused}"
    if mode.explicit or measured and target.sparse_24:
        return None
    if not target.sparse_24:
        return (f"target {target.name} has no sparse tensor cores in its profile; --sparsity {mode.pattern} "
                f"prices it anyway")
    if target.sparse_layer_speedup <= 1:
        return (f"target {target.name}'s profile predicts no 2:4 gain ([sparsity] layer_speedup = "
                f"{target.sparse_layer_speedup}: public reports show none on this device) until a table "
                f"measured on the device says otherwise")
    return None


def eligible(layer: Layer, mode: SparsityMode, target: Target, kernels: Runtime | None = None) -> bool:
    """A conv (not grouped) or linear layer whose input channels stay whole runs of M at every width, and
    (``kernels``: the runtime that measures the target here) one it runs on a sparse kernel at full width."""
    sig = layer.signature
    return (sig.op in ("conv2d", "linear") and sig.groups == 1 and not layer.depthwise and sig.sparsity == "dense"
            and sig.c_in % mode.m == 0 and target.channel_alignment % mode.m == 0
            and not layer.name.startswith(("merge:", "sparse:"))
            and (kernels is None or kernels.sparse_refusal(mode.pattern, sig.op, (sig.c_out, sig.c_in)) is None))


def sparse_options(layers: list[Layer], target: Target, mode: SparsityMode | None, measured: bool
                   ) -> list[StructuralOption]:
    """One option per eligible layer (none when :func:`not_offered` says why); ``measured``: the layers this
    host's runtime runs sparse."""
    if not_offered(mode, target, measured) is not None:
        return []
    kernels = runtime_for(target) if measured else None
    options = []
    for layer in layers:
        if eligible(layer, mode, target, kernels):
            sparse = replace(layer, name=sparse_key(layer.name),
                             signature=replace(layer.signature, sparsity=mode.pattern))
            options.append(StructuralOption(sparse_key(layer.name), frozenset({layer.name}), (sparse,),
                                       NMLayer(mode.n, mode.m)))
    return options


@dataclass
class SparsityCheck:
    """What pricing found, for the report: how each candidate's time compares with its dense layer."""

    pattern: str | None
    source: str  # "measured", "predicted" or "none"
    candidates: int
    offered: list[str]
    ratios: dict[str, float]  # sparse / dense time at full width, per candidate layer
    reason: str | None  # why none is offered (None when some are)

    def to_json(self) -> dict:
        ratios = list(self.ratios.values())
        spread = ({"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)} if ratios else None)
        return {"pattern": self.pattern, "source": self.source, "candidates": self.candidates,
                "offered": len(self.offered), "sparse_over_dense": spread, "reason": self.reason}


def worthwhile(options: list[StructuralOption], dense_ms: dict[str, float], sparse_ms: dict[str, float],
               mode: SparsityMode | None, target: Target, source: str, measured: bool
               ) -> tuple[list[StructuralOption], SparsityCheck]:
    """The options that save at least ``MIN_SAVING`` of their layer's time (full width), and the check."""
    reason = not_offered(mode, target, measured)
    ratios = {o.name: sparse_ms[o.key] / dense_ms[o.name] for o in options if o.key in sparse_ms}
    kept = [o for o in options if o.key in sparse_ms and ratios[o.name] <= 1 - MIN_SAVING]
    if reason is None and not kept:
        if not ratios:
            reason = f"no layer can take {mode.pattern} (conv or linear, ungrouped, input channels in runs of {mode.m}"
            refused = runtime_for(target).sparse_refusal(mode.pattern, "conv2d") if measured else None
            reason += f"; {refused})" if refused else ")"
        else:
            values = sorted(ratios.values())
            reason = (f"{source} on {target.name}: {mode.pattern} layers run at {values[0]:.2f}-{values[-1]:.2f}x "
                      f"their dense time (median {statistics.median(values):.2f}x, {len(values)} layers); none saves "
                      f"{MIN_SAVING:.0%} or more")
            if target.sparse_24 and mode.pattern != "2:4":
                reason += "; sparse tensor cores run 2:4 only"
    check = SparsityCheck(mode.pattern if mode else None, source if ratios else "none", len(options),
                          [o.name for o in kept], ratios, reason)
    return kept, check
