"""Permute the channels of one coupled channel group in place, without changing what the model computes.

Reordering a group's channels is a symmetry of the network when every tensor that holds them moves
together: the producers' output rows (conv/linear weights and biases, depthwise filters, embedding
columns), the per-channel layers in between (BatchNorm weights and statistics, PReLU slopes,
LayerNorm affine parameters) and the consumers' input columns. Export uses this to put the channels
each consumer reads next to each other (UPSCALE-style) before pruning, so consumers read slices.

Where a channel lives in each layer comes from torch-pruning's group of the root layer: an item's
``idxs`` are the layer-side positions and its ``root_idxs`` the group channel behind each, which
already accounts for concat offsets (a channel sits at ``offset + c`` in the consumer of a cat) and
flatten expansion (a channel is a block of ``H * W`` inputs of the linear layer after a flatten).
Parameter-free ops in between (adds, concats, reshapes, activations) move channels without holding
any, so they need no change. Anything this cannot reorder exactly is refused up front, before any
tensor is touched.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from itertools import chain

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from hwprune.errors import PlanError
from hwprune.graph.analyze import Analysis
from hwprune.graph.depgraph.index_maps import tolerant_index_mapping
from hwprune.graph.groups import ChannelGroup

# One tensor that holds the group's channels: (module, parameter or buffer name, dim of the channels).
_Slot = tuple[nn.Module, str, int]
# What the layers handled here may own; anything else (weight_g/weight_v of weight norm) is unknown.
_KNOWN_STATE = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def permutable(analysis: Analysis, group_id: str) -> str | None:
    """None if :func:`permute_group` can reorder ``group_id`` exactly, else the reason why not."""
    group = analysis.group(group_id)
    try:
        _layout(analysis, group)
    except PlanError as refusal:
        return str(refusal)
    return None


@torch.no_grad()
def permute_group(analysis: Analysis, group_id: str, order: Sequence[int]) -> None:
    """Reorder the channels of group ``group_id`` in place: new channel p is old channel ``order[p]``.

    Parameters and buffers keep their identity, dtype and device (only their values move), so
    ``analysis`` stays valid and further groups can be permuted afterwards.
    """
    group = analysis.group(group_id)
    try:
        layout = _layout(analysis, group)
    except PlanError as refusal:
        raise PlanError(f"group {group_id} cannot be permuted: {refusal}") from None
    new_to_old = torch.tensor(_checked_order(group, order), dtype=torch.long)
    for (module, name, dim), positions in layout.items():
        tensor = getattr(module, name)
        where = torch.tensor(positions, dtype=torch.long)  # [channel, occurrence] -> index along dim
        source = torch.arange(tensor.shape[dim])
        source[where] = where[new_to_old]
        tensor.data = tensor.index_select(dim, source.to(tensor.device))  # rebound: a shared original stays


def _checked_order(group: ChannelGroup, order: Sequence[int]) -> list[int]:
    try:
        checked = [operator.index(i) for i in order]
    except TypeError:  # floats, None, ...: reported like any other bad order
        checked = []
    if sorted(checked) != list(range(group.channels)):
        raise PlanError(f"group {group.id}: order must be a permutation of range({group.channels})")
    return checked


def _layout(analysis: Analysis, group: ChannelGroup) -> dict[_Slot, list[list[int]]]:
    """Every tensor holding ``group``'s channels -> for each channel, its sorted indices along the dim.

    Raises PlanError with a short reason when the group cannot be permuted exactly.
    """
    if group.kind == "heads":
        raise PlanError("attention heads are not permuted")
    if group.repeat > 1:
        raise PlanError(f"a grouped convolution ties the channels into {group.repeat} blocks")
    if not group.prunable:  # the same ops that forbid removal (outputs, mixing, splits) forbid reordering
        raise PlanError(f"not prunable: {group.reason}")
    graph = analysis.capture.dependency_graph
    root = analysis.model.get_submodule(group.id)
    with tolerant_index_mapping(graph.hwprune_unmapped):
        items = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels,
                                        list(range(group.channels))).items
    channel_at: dict[_Slot, dict[int, int]] = {}  # slot -> index along the dim -> group channel
    for item in items:
        module = item.dep.target.module
        for slot in _slots(analysis, module, graph.is_out_channel_pruning_fn(item.dep.handler)):
            seen = channel_at.setdefault(slot, {})
            for index, channel in zip(item.idxs, item.root_idxs, strict=True):
                if seen.setdefault(index, channel) != channel:
                    raise PlanError(f"{analysis.capture.module_name(module)} holds two channels at index {index}")
    layout = {}
    for slot, seen in channel_at.items():
        positions: list[list[int]] = [[] for _ in range(group.channels)]
        for index, channel in sorted(seen.items()):
            positions[channel].append(index)
        if len({len(p) for p in positions}) != 1:
            raise PlanError(f"{analysis.capture.module_name(slot[0])} does not hold every channel equally often")
        layout[slot] = positions
    return layout


def _slots(analysis: Analysis, module: nn.Module | nn.Parameter, producer_side: bool) -> list[_Slot]:
    """The tensors of one group member that hold the group's channels, or a PlanError if unknown."""
    if isinstance(module, nn.Parameter):  # torch-pruning's node for a parameter used directly in forward
        raise PlanError(f"a bare parameter of shape {list(module.shape)} holds channels")
    if next(chain(module.parameters(), module.buffers()), None) is None:
        return []  # an internal op (add, concat, reshape, ...) or a parameter-free layer: nothing to move
    name = analysis.capture.module_name(module)
    slots = _layer_slots(module, name, producer_side)
    own = {key for key, _ in chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False))}
    if own - _KNOWN_STATE or any(key not in own for _, key, _ in slots):  # else writes would not stick
        raise PlanError(f"{name} computes its weights (weight norm or a parametrization)")
    return slots


def _layer_slots(module: nn.Module, name: str, producer_side: bool) -> list[_Slot]:
    convolution = isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
    if convolution and module.groups > 1 and not module.groups == module.in_channels == module.out_channels:
        raise PlanError(f"grouped convolution {name}")  # its group has repeat > 1 and was refused already
    if convolution or isinstance(module, nn.Linear):
        # Output rows or input columns. A depthwise filter reads and writes one channel: torch-pruning's
        # depthwise pruner uses one function for both sides, so it always arrives producer-side (dim 0).
        return _present(module, ("weight", "bias"), 0) if producer_side else [(module, "weight", 1)]
    if isinstance(module, _NormBase):  # BatchNorm, InstanceNorm: per-channel affine and statistics
        return _present(module, ("weight", "bias", "running_mean", "running_var"), 0)
    if isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) != 1:
            raise PlanError(f"LayerNorm {name} normalises over several dims")
        return _present(module, ("weight", "bias"), 0)  # its statistics do not depend on channel order
    if isinstance(module, nn.GroupNorm):
        if module.num_groups not in (1, module.num_channels):
            raise PlanError(f"GroupNorm {name} normalises blocks of {module.num_channels // module.num_groups} "
                            "channels")
        return _present(module, ("weight", "bias"), 0)
    if isinstance(module, nn.Embedding):  # a token's vector is one row: the channels are its columns
        return [(module, "weight", 1)]
    if isinstance(module, nn.PReLU):
        return _present(module, ("weight",), 0) if module.num_parameters > 1 else []
    raise PlanError(f"unsupported layer {name} ({type(module).__name__})")


def _present(module: nn.Module, names: Sequence[str], dim: int) -> list[_Slot]:
    return [(module, name, dim) for name in names if getattr(module, name, None) is not None]
