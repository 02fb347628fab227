"""Test helpers: make channels contribute nothing, then check that removing them is exact."""

from __future__ import annotations

import random

import torch
from torch import nn

from hwprune.graph.analyze import Analysis
from hwprune.graph.attention import HeadAttention
from hwprune.graph.capture import tolerant_index_mapping
from hwprune.graph.groups import ChannelGroup


def random_keep(group: ChannelGroup, rng: random.Random, ratio: float = 0.5) -> list[int]:
    """A random keep-set of about ``ratio`` of the channels that meets the group's constraints."""
    block = group.channels // group.repeat
    count = max(1, round(block * ratio))
    local = rng.sample(range(block), count)
    return sorted(b * block + i for b in range(group.repeat) for i in local)


@torch.no_grad()
def zero_dropped_channels(analysis: Analysis, group: ChannelGroup, kept: list[int]) -> None:
    """Zero every producer weight of the channels not in ``kept``, so they output exactly 0."""
    dropped = sorted(set(range(group.channels)) - set(kept))
    if not dropped:
        return
    if group.kind == "heads":
        attention = analysis.model.get_submodule(group.id.removesuffix(":heads"))
        assert isinstance(attention, HeadAttention)
        rows = [h * attention.head_dim + d for h in dropped for d in range(attention.head_dim)]
        attention.v_proj.weight[rows] = 0
        if attention.v_proj.bias is not None:
            attention.v_proj.bias[rows] = 0
        return
    graph = analysis.capture.dependency_graph
    root = analysis.model.get_submodule(group.id)
    with tolerant_index_mapping(graph.hwprune_unmapped):
        pruning_group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, dropped)
    for dep, idxs in pruning_group:
        module = dep.target.module
        if not graph.is_out_channel_pruning_fn(dep.handler) or not isinstance(module, nn.Module):
            continue
        for name in ("weight", "bias"):
            param = getattr(module, name, None)
            if isinstance(param, torch.Tensor):
                param[idxs] = 0


def max_abs_diff(a: object, b: object) -> float:
    if isinstance(a, (tuple, list)):
        return max(max_abs_diff(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return max(max_abs_diff(a[k], b[k]) for k in a)
    if hasattr(a, "logits"):
        return max_abs_diff(a.logits, b.logits)
    return float((a - b).abs().max())
