"""Test helpers: make channels contribute nothing, then check that removing them is exact."""

from __future__ import annotations

import random

from hwprune.evaluate.mask import silence_channels
from hwprune.graph.analyze import Analysis
from hwprune.graph.groups import ChannelGroup


def random_keep(group: ChannelGroup, rng: random.Random, ratio: float = 0.5) -> list[int]:
    """A random keep-set of about ``ratio`` of the channels that meets the group's constraints."""
    block = group.channels // group.repeat
    count = max(1, round(block * ratio))
    local = rng.sample(range(block), count)
    return sorted(b * block + i for b in range(group.repeat) for i in local)


def zero_dropped_channels(analysis: Analysis, group: ChannelGroup, kept: list[int]) -> None:
    """Zero every producer weight of the channels not in ``kept``, so they output exactly 0."""
    silence_channels(analysis, group, sorted(set(range(group.channels)) - set(kept)))


def max_abs_diff(a: object, b: object) -> float:
    if isinstance(a, (tuple, list)):
        return max(max_abs_diff(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return max(max_abs_diff(a[k], b[k]) for k in a)
    if hasattr(a, "logits"):
        return max_abs_diff(a.logits, b.logits)
    return float((a - b).abs().max())
