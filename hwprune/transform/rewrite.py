"""Depth passes: drop residual branches, fold BatchNorm, remove activations, move padding, merge.

They rewrite one torch.fx graph of the (width-pruned) model, driven by the Plan's ``depth`` and
``merge`` sections, in this order, each checked before and after:

``unmerged`` runs the first three (the form BatchNorm re-estimation and recovery train), ``merged``
the last two (exact, so they commute with both):

- ``DropBlocks``: every chosen ``x + f(x)`` becomes ``x``; the branch's layers go (a model fx
  cannot trace loses whole layers of its layer stacks instead: ``transform.layers``).
- ``FoldBatchNorm``: each span's BatchNorms into their convolutions (exact; checked on the example
  input).
- ``RemoveActivations``: the activations inside each span (this is the span's fidelity cost).
- ``MovePadding``: each span's padding onto its first conv (changes outputs at the borders only:
  the rest of the span's cost).
- ``MergeConvs``: each span's convolutions into one, and a span that is a whole residual branch
  takes its skip into the centre tap (exact; checked on the example input).

The merged convolution takes the path of the span's first conv, so the state dict keeps that name
and loses the others. The result is a ``GraphModule``: plain torch, exportable, trainable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from hwprune.errors import PlanError
from hwprune.graph.candidates import Block, DepthCandidates, Span
from hwprune.graph.spans import branch_of, candidates_of, depth_candidates, trace
from hwprune.plan import DroppedBlock, MergedSpan
from hwprune.transform.convmath import fold_batchnorm, fold_skip, merge_convs, move_padding
from hwprune.transform.layers import drop_layers
from hwprune.transform.passes import Pass, TransformError, run_passes

EXACT = 1e-4  # relative to the output's largest magnitude, float32 through a few merged layers


@dataclass
class Rewrite:
    """The graph under change, what the plan asks of it, and the outputs exact passes must keep."""

    graph: fx.GraphModule
    example_input: torch.Tensor
    spans: list[Span] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    before: torch.Tensor | None = None

    def node(self, name: str) -> fx.Node:
        for node in self.graph.graph.nodes:
            if node.name == name:
                return node
        raise TransformError(f"no node {name!r} in the graph")

    def module_node(self, path: str) -> fx.Node:
        for node in self.graph.graph.nodes:
            if node.op == "call_module" and node.target == path:
                return node
        raise TransformError(f"no call of {path!r} in the graph")

    def outputs(self) -> torch.Tensor:
        self.graph.recompile()
        with torch.no_grad():
            out = self.graph.eval()(self.example_input)
        return torch.cat([t.flatten() for t in _tensors(out)])

    def keep_outputs(self) -> None:
        self.before = self.outputs()

    def check_unchanged(self, what: str) -> None:
        after = self.outputs()
        scale = self.before.abs().max().clamp_min(1e-12)
        error = float((after - self.before).abs().max() / scale)
        if after.shape != self.before.shape or error > EXACT:
            raise TransformError(f"{what} changed the model's outputs (relative error {error:.2e})")

    def replace_module(self, path: str, module: nn.Module) -> None:
        parent, _, name = path.rpartition(".")
        setattr(self.graph.get_submodule(parent) if parent else self.graph, name, module)


def resolve(plan_merge: Sequence[MergedSpan], plan_depth: Sequence[DroppedBlock], found: DepthCandidates
            ) -> tuple[list[Span], list[Block]]:
    """The plan's entries as this model's candidates; an entry that is not one is a PlanError."""
    if found.reason and (plan_merge or plan_depth):
        raise PlanError(f"the plan merges or drops layers but {found.reason}")
    spans, blocks = [], []
    for entry in plan_merge:
        span = found.span(list(entry.convs), entry.skip)
        if span is None:
            raise PlanError(f"the plan merges {list(entry.convs)}, which is not a legal span of this model")
        spans.append(span)
    for entry in plan_depth:
        block = found.block(entry.block)
        if block is None:
            raise PlanError(f"the plan drops {entry.block!r}, which is not a droppable block of this model")
        if entry.fold is not None and block.add is not None:
            raise PlanError(f"the plan folds a linear map for {entry.block!r}, which is not a layer of a layer stack")
        blocks.append(block)
    used: dict[str, str] = {}
    for owner, layers in [*((s.key, s.convs) for s in spans), *((b.name, b.layers) for b in blocks)]:
        for layer in layers:
            if layer in used:
                raise PlanError(f"{layer} is in both {used[layer]} and {owner}; a layer merges or goes once")
            used[layer] = owner
    skips = [s.skip for s in spans if s.skip]
    if set(skips) & {b.add for b in blocks}:
        raise PlanError("a block's skip is both folded into a merged conv and dropped")
    return spans, blocks


def apply_depth(model: nn.Module, example_input: torch.Tensor, plan_merge: Sequence[MergedSpan],
                plan_depth: Sequence[DroppedBlock]) -> nn.Module:
    """``model`` with the plan's blocks dropped and spans merged (``model`` itself when both are empty)."""
    return merged(unmerged(model, example_input, plan_merge, plan_depth), example_input, plan_merge)


def unmerged(model: nn.Module, example_input: torch.Tensor, plan_merge: Sequence[MergedSpan],
             plan_depth: Sequence[DroppedBlock], calibration: Sequence[torch.Tensor] = ()) -> nn.Module:
    """The plan's depth decisions in trainable form: blocks dropped, each span's activations removed
    and its padding moved, its convolutions and BatchNorms still apart (what recovery trains and
    BatchNorm re-estimation sees). It computes what ``merged`` of it computes. ``model``'s own
    layers are shared, never changed: moved convs are new modules. A model fx cannot trace can
    only lose whole layers of its layer stacks (``transform.layers``: a copy), runs of them replaced by
    linear maps fitted on ``calibration`` where the plan folds them."""
    if not plan_merge and not plan_depth:
        return model
    try:
        graph = trace(model)
    except Exception:  # fx raises many kinds: no graph, so only stack layers can go
        _, blocks = resolve(plan_merge, plan_depth, depth_candidates(model, example_input))
        return drop_layers(model, blocks, plan_depth, calibration)
    spans, blocks = resolve(plan_merge, plan_depth, candidates_of(graph))
    rewrite = Rewrite(graph, example_input, spans, blocks)
    run_passes([DropBlocks(), RemoveActivations(), MovePadding()], rewrite)
    return _finish(rewrite.graph)


def merged(model: nn.Module, example_input: torch.Tensor, plan_merge: Sequence[MergedSpan]) -> nn.Module:
    """``unmerged``'s result with each span's BatchNorms folded and convolutions merged (exact)."""
    if not plan_merge:
        return model
    graph = trace_or_refuse(model)
    found = candidates_of(graph)
    spans = [found.span(list(e.convs), e.skip) for e in plan_merge]
    if any(span is None for span in spans):
        raise TransformError("a span of the plan is no longer a chain after its activations were removed")
    rewrite = Rewrite(graph, example_input, spans)
    run_passes([FoldBatchNorm(), MergeConvs()], rewrite)
    return _finish(rewrite.graph)


def _finish(graph: fx.GraphModule) -> fx.GraphModule:
    graph.graph.eliminate_dead_code()
    graph.delete_all_unused_submodules()
    graph.recompile()
    return graph


def trace_or_refuse(model: nn.Module) -> fx.GraphModule:
    try:
        return trace(model)
    except Exception as exc:  # fx raises many kinds
        raise PlanError(f"the plan merges or drops layers but torch.fx cannot trace the model "
                        f"({type(exc).__name__})") from exc


class DropBlocks(Pass[Rewrite]):
    name = "drop-blocks"

    def call(self, surgery: Rewrite) -> bool:
        for block in surgery.blocks:
            add = surgery.node(block.add)
            found = branch_of(add)
            if found is None:
                raise TransformError(f"{block.name}: its add is no longer x + f(x)")
            skip, _ = found
            add.replace_all_uses_with(skip)
            surgery.graph.graph.erase_node(add)
        surgery.graph.graph.eliminate_dead_code()
        return bool(surgery.blocks)

    def ensures(self, surgery: Rewrite) -> None:
        names = {n.name for n in surgery.graph.graph.nodes}
        modules = {n.target for n in surgery.graph.graph.nodes if n.op == "call_module"}
        for block in surgery.blocks:
            if block.add in names or set(block.layers) & modules:
                raise TransformError(f"{block.name}: its branch is still in the graph")


class FoldBatchNorm(Pass[Rewrite]):
    name = "fold-batchnorm"

    def requires(self, surgery: Rewrite) -> None:
        surgery.keep_outputs()

    def call(self, surgery: Rewrite) -> bool:
        changed = False
        for span in surgery.spans:
            for conv, norm in zip(span.convs, span.norms, strict=True):
                if norm is None:
                    continue
                node = surgery.module_node(norm)
                surgery.replace_module(conv, fold_batchnorm(surgery.graph.get_submodule(conv),
                                                            surgery.graph.get_submodule(norm)))
                node.replace_all_uses_with(node.args[0])
                surgery.graph.graph.erase_node(node)
                changed = True
        return changed

    def ensures(self, surgery: Rewrite) -> None:
        surgery.check_unchanged("folding BatchNorm")


class RemoveActivations(Pass[Rewrite]):
    name = "remove-activations"

    def call(self, surgery: Rewrite) -> bool:
        for span in surgery.spans:
            for name in span.activations:
                node = surgery.node(name)
                node.replace_all_uses_with(node.all_input_nodes[0])
                surgery.graph.graph.erase_node(node)
        return any(span.activations for span in surgery.spans)

    def ensures(self, surgery: Rewrite) -> None:
        left = {n.name for n in surgery.graph.graph.nodes} & {a for s in surgery.spans for a in s.activations}
        if left:
            raise TransformError(f"activations still in the graph: {sorted(left)}")


class MovePadding(Pass[Rewrite]):
    name = "move-padding"

    def requires(self, surgery: Rewrite) -> None:
        surgery.keep_outputs()

    def call(self, surgery: Rewrite) -> bool:
        for span in surgery.spans:
            moved = move_padding([surgery.graph.get_submodule(c) for c in span.convs])
            for path, conv in zip(span.convs, moved, strict=True):
                surgery.replace_module(path, conv)
        return bool(surgery.spans)

    def ensures(self, surgery: Rewrite) -> None:
        if surgery.outputs().shape != surgery.before.shape:
            raise TransformError("moving padding changed the outputs' shapes")


class MergeConvs(Pass[Rewrite]):
    name = "merge-convs"

    def requires(self, surgery: Rewrite) -> None:
        surgery.keep_outputs()

    def call(self, surgery: Rewrite) -> bool:
        for span in surgery.spans:
            first, last = surgery.module_node(span.convs[0]), surgery.module_node(span.convs[-1])
            merged = merge_convs([surgery.graph.get_submodule(c) for c in span.convs])
            end = surgery.node(span.skip) if span.skip else last
            doomed = [end] if span.skip else []
            node = last
            while node is not first:  # the span is a single-reader chain: walk it back
                doomed.append(node)
                node = node.all_input_nodes[0]
            end.replace_all_uses_with(first)
            for gone in doomed:  # readers before what they read
                surgery.graph.graph.erase_node(gone)
            if span.skip:
                merged = fold_skip(merged)
            surgery.replace_module(span.convs[0], merged)
        return bool(surgery.spans)

    def ensures(self, surgery: Rewrite) -> None:
        surgery.check_unchanged("merging convolutions")


def _tensors(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return [t for item in out for t in _tensors(item)]
    return []
