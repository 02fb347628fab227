"""Unconstrained pruning (UPSCALE): every reader of a segment keeps its own input channels.

Masks: for a segment whose group keeps ``n`` channels, each reader keeps the ``n`` channels that
contribute most to its own output on calibration inputs (weight column x activation norm); the
group keeps the union, so its producers drop only what no reader reads.

Export, in place on the analysed model:

1. with ``reorder``, permute each segment's channels (an exact symmetry of the network, see
   ``permute``) into the order ``reorder.channel_order`` finds, the union first, so that each
   reader's channels fall into as few contiguous runs as possible;
2. prune every group to its keep-set (a segment's to its union) with the constrained surgery;
3. put a :class:`ChannelSelect` in front of every reader that reads less than all it receives,
   and keep only those columns of its weight. A selection of one run is a slice (a view in
   PyTorch, a ``Slice`` in ONNX); more runs need a gather (``Gather``: a copy of every selected
   channel). Without ``reorder`` (the naive export) channels stay in their original order.

Both exports compute the same function as the original model with every reader's unread
columns zeroed (``masked_readers``), which is what the tests check.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hwprune.graph.analyze import Analysis
from hwprune.graph.capture import tolerant_index_mapping
from hwprune.graph.segments import Reader, Segment
from hwprune.importance.scores import select
from hwprune.latency.layers import input_shapes
from hwprune.latency.signature import OpSignature
from hwprune.transform.permute import permutable, permute_group
from hwprune.transform.prune import prune
from hwprune.transform.reorder import channel_order
from hwprune.transform.silence import silenced


@dataclass
class SegmentMask:
    union: list[int]  # group channels the producers keep, ascending
    reads: dict[str, list[int]]  # reader layer -> the group channels it reads, ascending


class ChannelSelect(nn.Module):
    """The channels a pruned reader reads: a slice when they are one run, else a gather."""

    def __init__(self, positions: Sequence[int], dim: int):
        super().__init__()
        self.dim = dim
        positions = list(positions)
        self.start = positions[0]
        self.contiguous = positions == list(range(positions[0], positions[0] + len(positions)))
        self.register_buffer("index", torch.tensor(positions, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.contiguous:
            return x.narrow(self.dim, self.start, self.index.numel())
        return x.index_select(self.dim, self.index)


def reader_masks(scores: Mapping[str, Mapping[str, np.ndarray]], counts: Mapping[str, int]) -> dict[str, SegmentMask]:
    """Per segment in ``counts``: each reader's ``counts[group]`` channels with the highest score
    (``importance.readers.reader_scores``, computed once, since they do not depend on the counts);
    the group keeps their union."""
    masks = {}
    for gid, per_reader in scores.items():
        if gid not in counts:
            continue
        reads = {layer: select(reader, counts[gid]) for layer, reader in per_reader.items()}
        masks[gid] = SegmentMask(sorted(set().union(*reads.values())), reads)
    return masks


@contextmanager
def masked_readers(analysis: Analysis, segments: Sequence[Segment], masks: Mapping[str, SegmentMask],
                   keep: Mapping[str, Sequence[int]]) -> Iterator[nn.Module]:
    """The unpruned model with each reader's unread input columns zeroed and the channels ``keep``
    drops from the other groups silenced: the function both exports must compute. Restored on exit."""
    saved = []
    dropped = {gid: sorted(set(range(analysis.group(gid).channels)) - set(kept)) for gid, kept in keep.items()}
    with torch.no_grad(), silenced(analysis, dropped) as model:
        try:
            for segment in segments:
                mask = masks.get(segment.group)
                if mask is None:
                    continue
                for reader in segment.readers:
                    weight = model.get_submodule(reader.layer).weight
                    unread = _unread_inputs(reader, mask.reads[reader.layer])
                    saved.append((weight, unread, weight[:, unread].clone()))
                    weight[:, unread] = 0
            yield model
        finally:
            for weight, unread, values in reversed(saved):
                weight[:, unread] = values


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
            unread.setdefault(reader.layer, set()).update(_unread_inputs(reader, mask.reads[reader.layer]))
    widths = {layer: _input_width(analysis.model.get_submodule(layer)) for layer in unread}
    prune(analysis, everything)
    for layer, skipped in unread.items():
        gone = dropped.get(layer, set())
        surviving = [i for i in range(widths[layer]) if i not in gone]
        positions = [p for p, i in enumerate(surviving) if i not in skipped]
        if len(positions) < len(surviving):
            _select_inputs(analysis.model, layer, analysis.model.get_submodule(layer), positions)
    return analysis.model


def _unread_inputs(reader: Reader, reads: Sequence[int]) -> list[int]:
    """The reader's input indices that carry group channels it does not read."""
    kept = set(reads)
    return [i for channel, indices in reader.inputs.items() if channel not in kept for i in indices]


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


def copy_signatures(model: nn.Module, example_input: torch.Tensor) -> dict[str, OpSignature]:
    """Per ChannelSelect in ``model`` (by module name), the copy op it exports as, at the size one
    forward on ``example_input`` shows: what the latency table must price."""
    found = {}
    for name, (select_, shape) in input_shapes(model, example_input, (ChannelSelect,)).items():
        rest = list(shape)
        width = rest.pop(select_.dim)
        batch, rest = rest[0], rest[1:]
        h, w = (rest[0], rest[1]) if len(rest) == 2 else (int(torch.tensor(rest).prod()) if rest else 1, 1)
        found[name] = OpSignature("slice" if select_.contiguous else "gather", batch, width, select_.index.numel(),
                                  h, w)
    return found
