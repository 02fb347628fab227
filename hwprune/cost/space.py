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
from dataclasses import dataclass

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
    """Every signature the predictor needs for these layers (every width of every axis), without duplicates,
    in a stable order."""
    needed = {s.key(): s for sweep in sweeps(layers, groups, alignment) for s in sweep.signatures}
    return list(needed.values())



# Adaptive profiling: a layer's time along one channel axis is a staircase (steps at the runtime's alignment)
# close to a line, so a few measurements fit it. The first pass times every ``stride``-th count of the axis (and
# its last): line points at even multiples of the stride, check points halfway between. The second fills in,
# count by count, each stretch whose check point is off the line through its neighbours by more than
# ``UNSURE`` of its time. Two passes: two batches, so at most two round trips to a device.
COARSE_POINTS = 4  # about this many line segments per axis in the first pass (each with its check point)
UNSURE = 0.03


@dataclass(frozen=True)
class Sweep:
    """One axis of one layer: the channel counts it can take, ascending, and its signature at each."""

    counts: tuple[int, ...]
    signatures: tuple[OpSignature, ...]

    def stride(self) -> int:
        """Index spacing of the first pass: the power of two nearest (counts - 1) / (2 * COARSE_POINTS), so
        the first pass times about 2 * COARSE_POINTS + 1 counts (1: every count, for a short axis)."""
        return 2 ** max(0, round(math.log2(max(len(self.counts) - 1, 1) / (2 * COARSE_POINTS))))

    def first_pass(self) -> list[OpSignature]:
        """Every ``stride``-th count's signature (line and check points alike) and the last's."""
        indices = set(range(0, len(self.counts), self.stride())) | {len(self.counts) - 1}
        return [self.signatures[i] for i in sorted(indices)]

    def second_pass(self, measured: dict[int, float]) -> list[OpSignature]:
        """The signatures of each stretch between line points whose check point the line through them
        misses by more than ``UNSURE`` (``measured``: count -> ms, what the first pass found)."""
        step, last = self.stride(), len(self.counts) - 1
        fill: set[int] = set()
        for start in range(0, last, 2 * step):
            check, end = start + step, min(start + 2 * step, last)
            if check >= end or not all(self.counts[i] in measured for i in (start, check, end)):
                continue
            a, b, c = (self.counts[i] for i in (start, check, end))
            line = measured[a] + (measured[c] - measured[a]) * (b - a) / (c - a)
            if abs(line - measured[b]) > UNSURE * measured[b]:
                fill.update(i for i in range(start + 1, end) if i != check)
        return [self.signatures[i] for i in sorted(fill)]


def sweeps(layers: list[Layer], groups: dict[str, ChannelGroup], alignment: int) -> list[Sweep]:
    """Every axis the predictor reads for these layers (a depthwise layer has one), without duplicates."""
    found: dict[tuple, Sweep] = {}
    for layer in layers:
        sig = layer.signature
        ins, outs = layer_axes(layer, groups, alignment)
        axes = [[sig.with_channels(c, c) for c in outs]] if layer.depthwise else [
            [sig.with_channels(sig.c_in, c) for c in outs], [sig.with_channels(c, sig.c_out) for c in ins]]
        for points in axes:
            points = sorted({p.key(): p for p in points}.values(), key=lambda p: (p.c_out, p.c_in))
            along_in = len({p.c_in for p in points}) > 1 and len({p.c_out for p in points}) == 1
            counts = tuple(p.c_in if along_in else p.c_out for p in points)
            sweep = Sweep(counts, tuple(points))
            found.setdefault(tuple(p.key() for p in points), sweep)
    return list(found.values())
