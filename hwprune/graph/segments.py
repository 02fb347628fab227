"""Segments: one coupled group seen as a tensor's channels, the layers that write them and the
dense layers that read them (UPSCALE's producers and consumers).

Constrained pruning drops one channel set for a whole group: every producer feeding a residual
add, and every layer reading the sum, lose the same channels. Unconstrained pruning lets each
reader keep its own input channels; the producers then keep the union (a channel survives if
any reader reads it), and each reader picks its channels out of the union at run time.

A reader is a convolution with ``groups == 1`` or a linear layer whose input carries the
group's channels (through adds, concatenations at an offset, or a flatten); element-wise layers
on the way (BatchNorm, ReLU) are not readers, they keep the union. A group qualifies when it is
prunable, removal is exact, it is neither attention heads nor a grouped convolution's, and every
layer that takes its channels as input is such a reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from hwprune.graph.analyze import Analysis
from hwprune.graph.depgraph.index_maps import frozen_index_mapping, tolerant_index_mapping
from hwprune.graph.groups import ChannelGroup

DENSE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Reader:
    layer: str
    inputs: dict[int, list[int]]  # group channel -> the reader's input indices that carry it

    def unread(self, reads: Sequence[int]) -> list[int]:
        """The input indices that carry group channels outside ``reads``."""
        kept = set(reads)
        return [i for channel, indices in self.inputs.items() if channel not in kept for i in indices]


@dataclass
class Segment:
    group: str
    channels: int
    producers: list[str]
    readers: list[Reader]


def segments(analysis: Analysis) -> list[Segment]:
    """Every group unconstrained pruning can treat reader by reader."""
    found = []
    with frozen_index_mapping(analysis.capture.dependency_graph):
        for group in analysis.prunable():
            if group.kind == "heads" or group.repeat > 1 or not group.exact_removal:
                continue
            readers = _readers(analysis, group)
            if readers:
                found.append(Segment(group.id, group.channels, list(group.producers), readers))
    return found


def _readers(analysis: Analysis, group: ChannelGroup) -> list[Reader] | None:
    graph = analysis.capture.dependency_graph
    root = analysis.model.get_submodule(group.id)
    with tolerant_index_mapping(graph.hwprune_unmapped):
        dependency_group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels,
                                                   list(range(group.channels)))
    readers: dict[str, Reader] = {}
    for item in dependency_group.items:
        module = item.dep.target.module
        if graph.is_out_channel_pruning_fn(item.dep.handler) or not isinstance(module, nn.Module):
            continue
        if not isinstance(module, DENSE) or getattr(module, "groups", 1) != 1:
            return None
        name = analysis.capture.module_name(module)
        reader = readers.setdefault(name, Reader(name, {}))
        for index, channel in zip(item.idxs, item.root_idxs, strict=True):
            reader.inputs.setdefault(int(channel), []).append(int(index))
    return list(readers.values())
