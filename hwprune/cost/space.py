"""The channel counts the search may choose, and the op signatures that must be timed for them.

A group may keep any multiple of the target's channel alignment (kernels step there: 17
channels cost what 32 do at an alignment of 16), of its grouped-conv ``repeat``, or all of its
channels; heads are kept one by one (a unit of grouped-query attention: a key/value head and
its query heads). Each layer is profiled along its output axis (inputs full) and along its
input axis (outputs full); the predictor combines the two sweeps, so the table grows with the
sum of the axes' sizes, not their product. A layer with one channel axis (a depthwise conv;
attention's core, whose channels are its query heads) is profiled along it alone.
"""

from __future__ import annotations

import math

from hwprune.cost.layers import Layer
from hwprune.cost.signature import OpSignature
from hwprune.graph.groups import ChannelGroup


def channel_choices(group: ChannelGroup | None, alignment: int) -> list[int]:
    """Allowed keep counts of ``group`` in its own units (channels, or heads), ascending."""
    if group is None:
        return []
    if not group.prunable:
        return [group.channels]
    if group.kind == "heads":
        return list(range(1, group.channels + 1))
    step = math.lcm(alignment, group.repeat)
    if step >= group.channels:
        step = group.repeat
    return sorted(set(range(step, group.channels, step)) | {group.channels})


def layer_axes(layer: Layer, groups: dict[str, ChannelGroup], alignment: int) -> tuple[list[int], list[int]]:
    """The c_in and c_out values ``layer`` can take under the allowed keep counts."""
    sig = layer.signature
    outs = [layer.c_out({layer.out_group: n}) for n in channel_choices(groups.get(layer.out_group), alignment)]
    if layer.depthwise:
        return outs or [sig.c_out], outs or [sig.c_out]
    ins = {layer.c_in({g.group: n}) for g in layer.inputs for n in channel_choices(groups.get(g.group), alignment)}
    return sorted(ins | {sig.c_in}), outs or [sig.c_out]


def profile_signatures(layers: list[Layer], groups: dict[str, ChannelGroup], alignment: int) -> list[OpSignature]:
    """Every signature the predictor needs for these layers, without duplicates, in a stable order."""
    needed: dict[str, OpSignature] = {}
    for layer in layers:
        sig = layer.signature
        ins, outs = layer_axes(layer, groups, alignment)
        if layer.depthwise:
            points = [(c, c) for c in outs]
        else:
            points = [(sig.c_in, c_out) for c_out in outs] + [(c_in, sig.c_out) for c_in in ins]
        for c_in, c_out in points:
            variant = sig.with_channels(c_in, c_out)
            needed.setdefault(variant.key(), variant)
    return list(needed.values())
