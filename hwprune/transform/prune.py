"""Physical pruning: remove channels and heads from the module itself, never by masking.

torch-pruning does the per-layer surgery (weights, biases, BN statistics, depthwise ``groups``,
concat offsets, flatten expansion); hwprune validates the whole request first, so a bad
keep-set fails before any layer is touched, and removes attention heads itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from hwprune.errors import PlanError
from hwprune.graph.analyze import Analysis
from hwprune.graph.attention import HeadAttention
from hwprune.graph.capture import tolerant_index_mapping
from hwprune.graph.groups import ChannelGroup


def prune(analysis: Analysis, keep: Mapping[str, Sequence[int]]) -> nn.Module:
    """Keep only ``keep[group_id]`` channels of each named group; returns the (same) pruned model.

    The model is changed in place and ``analysis`` describes the unpruned model afterwards, so it
    must not be used for a second prune.
    """
    checked = {group_id: validate_keep(analysis.group(group_id), indices) for group_id, indices in keep.items()}
    graph = analysis.capture.dependency_graph
    for group_id, kept in checked.items():
        group = analysis.group(group_id)
        if len(kept) == group.channels:
            continue
        if group.kind == "heads":
            module = analysis.model.get_submodule(group_id.removesuffix(":heads"))
            assert isinstance(module, HeadAttention)
            module.keep_heads(kept)
            continue
        root = analysis.model.get_submodule(group_id)
        dropped = sorted(set(range(group.channels)) - set(kept))
        pruner = graph.get_pruner_of_module(root)
        with tolerant_index_mapping(graph.hwprune_unmapped):
            graph.get_pruning_group(root, pruner.prune_out_channels, dropped).prune()
    return analysis.model


def leading_channels(group: ChannelGroup, count: int) -> list[int]:
    """The first ``count`` channels of ``group`` (the same positions in every grouped-conv block).

    Which channels go does not change latency, so this is the keep-set for timing a width.
    """
    block = group.channels // group.repeat
    return [b * block + i for b in range(group.repeat) for i in range(count // group.repeat)]


def validate_keep(group: ChannelGroup, indices: Sequence[int]) -> list[int]:
    """Sorted keep-indices for ``group``, or a PlanError saying what is wrong with them."""
    if not group.prunable and len(indices) != group.channels:
        raise PlanError(f"group {group.id} is not prunable: {group.reason}")
    kept = sorted(int(i) for i in indices)
    if not kept:
        raise PlanError(f"group {group.id}: must keep at least one channel")
    if len(set(kept)) != len(kept):
        raise PlanError(f"group {group.id}: keep-indices repeat a channel")
    if kept[0] < 0 or kept[-1] >= group.channels:
        raise PlanError(f"group {group.id}: keep-indices must lie in [0, {group.channels})")
    if group.repeat > 1:
        block = group.channels // group.repeat
        local = [{i % block for i in kept if i // block == b} for b in range(group.repeat)]
        if any(positions != local[0] for positions in local):
            raise PlanError(
                f"group {group.id}: a grouped convolution ({group.repeat} groups of {block}) needs the same "
                "channel positions kept in every group")
    return kept
