"""Unconstrained pruning (UPSCALE): every reader of a segment keeps its own input channels.

The search decides each reader's channels (``search.readers``); this realises them, in place
on the analysed model:

1. with ``reorder``, permute each segment's channels (an exact symmetry of the network, see
   ``permute``) into the order ``reorder.channel_order`` finds, the union first, so that each
   reader's channels fall into as few contiguous runs as possible;
2. prune every group to its keep-set (a segment's to its union) with the constrained surgery;
3. put a :class:`ChannelSelect` in front of every reader that reads less than all it receives,
   and keep only those columns of its weight. A selection of one run is a slice (a view in
   PyTorch, a ``Slice`` in ONNX); more runs need a gather (``Gather``: a copy of every selected
   channel). Without ``reorder`` (the naive export) channels stay in their original order.

Both exports compute the same function as the original model with every reader's unread
columns zeroed (``evaluate.mask.masked_readers``), which is what the tests check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from hwprune.graph.analyze import Analysis
from hwprune.graph.capture import tolerant_index_mapping
from hwprune.graph.segments import Segment
from hwprune.graph.select import ChannelSelect
from hwprune.search.readers import SegmentMask
from hwprune.transform.permute import permutable, permute_group
from hwprune.transform.prune import prune
from hwprune.transform.reorder import channel_order


def export_unconstrained(analysis: Analysis, segments: Sequence[Segment], masks: Mapping[str, SegmentMask],
                         keep: Mapping[str, Sequence[int]], reorder: bool) -> nn.Module:
    """Prune ``analysis.model`` in place: segments in ``masks`` unconstrained, every other group in
    ``keep`` constrained; returns the model. ``analysis`` describes the unpruned model afterwards."""
    masks = dict(masks)
    if reorder:
        for segment in segments:
            if segment.group in masks and permutable(analysis, segment.group) is None:
                masks[segment.group] = _reorder(analysis, segment, masks[segment.group])
    by_group = {s.group: s for s in segments}
    everything = {**keep, **{gid: m.union for gid, m in masks.items()}}
    dropped = _dropped_inputs(analysis, everything)
    unread: dict[str, set[int]] = {}
    for gid, mask in masks.items():
        for reader in by_group[gid].readers:
            unread.setdefault(reader.layer, set()).update(reader.unread(mask.reads[reader.layer]))
    widths = {layer: _input_width(analysis.model.get_submodule(layer)) for layer in unread}
    prune(analysis, everything)
    for layer, skipped in unread.items():
        gone = dropped.get(layer, set())
        surviving = [i for i in range(widths[layer]) if i not in gone]
        positions = [p for p, i in enumerate(surviving) if i not in skipped]
        if len(positions) < len(surviving):
            _select_inputs(analysis.model, layer, analysis.model.get_submodule(layer), positions)
    return analysis.model


def _reorder(analysis: Analysis, segment: Segment, mask: SegmentMask) -> SegmentMask:
    """Permute the segment's channels: the union first, in the order that minimises reader runs."""
    position = {channel: p for p, channel in enumerate(mask.union)}
    order = channel_order(len(mask.union), [[position[c] for c in reads] for reads in mask.reads.values()])
    unused = [c for c in range(segment.channels) if c not in position]
    permutation = [mask.union[p] for p in order] + unused
    permute_group(analysis, segment.group, permutation)
    new_index = {old: new for new, old in enumerate(permutation)}
    return SegmentMask(list(range(len(mask.union))),
                       {layer: sorted(new_index[c] for c in reads) for layer, reads in mask.reads.items()})


def _dropped_inputs(analysis: Analysis, keep: Mapping[str, Sequence[int]]) -> dict[str, set[int]]:
    """Per layer, the input indices constrained pruning to ``keep`` removes (as ``prune`` will)."""
    graph = analysis.capture.dependency_graph
    dropped: dict[str, set[int]] = {}
    for gid, kept in keep.items():
        group = analysis.group(gid)
        gone = sorted(set(range(group.channels)) - set(kept))
        if not gone or group.kind == "heads":
            continue
        root = analysis.model.get_submodule(gid)
        with tolerant_index_mapping(graph.hwprune_unmapped):
            dependency_group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, gone)
        for item in dependency_group.items:
            module = item.dep.target.module
            if isinstance(module, nn.Module) and not graph.is_out_channel_pruning_fn(item.dep.handler):
                dropped.setdefault(analysis.capture.module_name(module), set()).update(int(i) for i in item.idxs)
    return dropped


def _input_width(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _select_inputs(model: nn.Module, layer: str, module: nn.Module, positions: list[int]) -> None:
    """Keep only ``positions`` of ``module``'s inputs and read them through a ChannelSelect."""
    with torch.no_grad():
        module.weight = nn.Parameter(module.weight[:, positions].clone())
    if isinstance(module, nn.Linear):
        module.in_features = len(positions)
        dim = -1
    else:
        module.in_channels = len(positions)
        dim = 1
    parent_name, _, child = layer.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Sequential(ChannelSelect(positions, dim), module))
