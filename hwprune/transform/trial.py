"""Proof of prunability: every group the analyzer calls prunable is pruned for real, on a copy,
before anything relies on it.

The analyzer reasons from a trace; a model can still break when pruned (a per-channel constant
outside any layer that broadcasts against the narrower activation, an op whose sizes are fixed in
code). Finding that mid-compile, after profiling and searching, is the worst time. So all
prunable groups are trial-pruned together on a copy (about half of each group's channels) and
the copy runs one forward on the example input; only when that fails are the groups bisected,
each half on a fresh copy, down to the groups that fail alone. Those are refused with the error.
Cost: one copy (sharing the weights pruning leaves), analysis and forward when all is well;
O(k log n) of them for k failing groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hwprune.errors import first_line
from hwprune.graph.analyze import Analysis
from hwprune.graph.groups import ChannelGroup
from hwprune.transform.prune import leading_channels, pruned_copy


def prove_prunable(analysis: Analysis) -> dict[str, str]:
    """Refuse (in ``analysis``) every prunable group whose trial pruning fails; returns {group: error}."""
    failed: dict[str, str] = {}
    _bisect(analysis, analysis.prunable(), failed)
    for gid, error in failed.items():
        analysis.refuse(gid, f"trial pruning failed: {error}")
    return failed


def _bisect(analysis: Analysis, groups: Sequence[ChannelGroup], failed: dict[str, str]) -> None:
    if not groups:
        return
    error = _trial(analysis, groups)
    if error is None:
        return
    if len(groups) == 1:
        failed[groups[0].id] = error
        return
    middle = len(groups) // 2
    _bisect(analysis, groups[:middle], failed)
    _bisect(analysis, groups[middle:], failed)


def _trial(analysis: Analysis, groups: Sequence[ChannelGroup]) -> str | None:
    """Prune ``groups`` to about half on a fresh copy and run it; the error in one line, or None."""
    x = analysis.capture.example_input
    try:
        pruned = pruned_copy(analysis, {g.id: leading_channels(g, _half(g)) for g in groups})
        with torch.no_grad():
            pruned(x)
    except Exception as exc:  # any failure of the pruned copy is the verdict, reported per group
        return first_line(exc, 200)
    return None


def _half(group: ChannelGroup) -> int:
    """About half of the group's channels, a whole number per grouped-conv block, at least one each."""
    per_block = max(1, group.channels // group.repeat // 2)
    return per_block * group.repeat
