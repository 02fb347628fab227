"""What a depth choice does to the timed layers: a merged span replaces its convolutions by one
conv of the merged shape; a dropped block removes its branch's layers (a whole layer of a stack,
every timed op under its path: its projections and its attention core). A layer replaced by a
linear map (ReplaceMe, ``transform.linear_map``) removes the same layers: the map is folded into a
kept projection, which keeps its shape, so it costs what removing the layer costs.

The merged conv is a new op signature (kernel, stride, padding of the span; the first conv's input
and the last conv's output), sized by the same channel groups as the span's ends, so the width
search prices it like any other layer: profiled on ``cpu`` (it joins the profile), predicted by
the analytic model elsewhere. A conv inside a span keeps no width of its own once merged: the
groups between the span's convs stop costing anything. The last conv's epilogue (``OpSignature.epilogue``)
follows the merged conv (a chain's convs other than its last have none: a constant Mul ends a chain).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hwprune.cost.layers import GroupInput, Layer
from hwprune.cost.signature import OpSignature
from hwprune.graph.analyze import Analysis
from hwprune.graph.candidates import Block, DepthCandidates, Span
from hwprune.plan import DroppedBlock, MergedSpan, NMLayer


@dataclass(frozen=True)
class StructuralOption:
    """One span merged, one block dropped or one layer made N:M (``cost.sparse``): a structural
    option, as the latency model and the joint search see it."""

    key: str  # "merge:<first>+...+<last>[ (with skip)]", "drop:<block>", "replace:<layer>" or "sparse:<layer>"
    removes: frozenset[str]  # layers that no longer run as they were
    adds: tuple[Layer, ...]  # the merged conv, or the N:M layer (none for a drop)
    choice: MergedSpan | DroppedBlock | NMLayer  # the Plan's record of it (an N:M layer's is keyed by ``name``)

    @property
    def kind(self) -> str:
        return self.key.split(":", 1)[0]

    @property
    def name(self) -> str:
        """What the option acts on: the span, the block or the layer."""
        return self.key.split(":", 1)[1]


def stack_layers(options: Iterable[StructuralOption]) -> list[str]:
    """The layers of a layer stack among ``options`` (plain drops of a whole module, ``graph.stack``)."""
    return [o.choice.block for o in options if o.kind == "drop" and o.choice.add is None]


def merge_key(span: Span) -> str:
    return f"merge:{span.key}"


def drop_key(block: Block) -> str:
    return f"drop:{block.name}"


def replacements(options: Iterable[StructuralOption], folds: dict[str, str]) -> list[StructuralOption]:
    """For each stack layer's drop among ``options`` that ``folds`` names a projection for, the same layers
    replaced by a linear map folded there: the alternative the joint search weighs against the drop (the
    two share their layers, so they are one unit's choices, at one time)."""
    return [StructuralOption(f"replace:{o.choice.block}", o.removes, (),
                             DroppedBlock(o.choice.block, None, folds[o.choice.block]))
            for o in options if o.kind == "drop" and o.choice.block in folds]


def depth_options(analysis: Analysis, found: DepthCandidates, layers: list[Layer]) -> list[StructuralOption]:
    """Every candidate whose layers the latency model times, as options; spans with a non-square
    merged kernel are left out (op signatures hold one kernel size)."""
    by_name = {layer.name: layer for layer in layers}
    options = []
    for span in found.spans:
        if span.kernel[0] != span.kernel[1] or span.stride[0] != span.stride[1] or span.padding[0] != span.padding[1]:
            continue
        if not all(c in by_name for c in span.convs):
            continue
        first, last = by_name[span.convs[0]], by_name[span.convs[-1]]
        sig = first.signature
        merged_sig = OpSignature("conv2d", sig.batch, sig.c_in, last.signature.c_out, sig.h, sig.w, span.kernel[0],
                                 span.stride[0], span.padding[0], 1, sig.c_in if span.depthwise else 1, sig.dtype,
                                 epilogue=last.signature.epilogue)
        inputs = first.inputs
        if first.depthwise and not span.depthwise and first.out_group is not None:
            group = analysis.group(first.out_group)
            inputs = (GroupInput(group.id, group.channels, sig.c_in),) if group.prunable else ()
        merged = Layer(merge_key(span), merged_sig, last.out_group, inputs, span.depthwise, last.out_scale)
        choice = MergedSpan(tuple(span.convs), tuple(span.activations), span.skip)
        options.append(StructuralOption(merge_key(span), frozenset(span.convs), (merged,), choice))
    for block in found.blocks:
        removed = frozenset(name for name in by_name if name in block.layers or (
            block.add is None and name.startswith((f"{block.name}.", f"{block.name}:"))))
        if removed:
            options.append(StructuralOption(drop_key(block), removed, (), DroppedBlock(block.name, block.add)))
    return options
