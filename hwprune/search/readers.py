"""Unconstrained (UPSCALE) decisions: which group channels each dense reader of a segment keeps.

For a segment whose group keeps ``n`` channels, each reader keeps the ``n`` channels that
contribute most to its own output on calibration inputs (``importance.readers``); the group
keeps the union, so its producers drop only what no reader reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hwprune.importance.scores import select


@dataclass
class SegmentMask:
    union: list[int]  # group channels the producers keep, ascending
    reads: dict[str, list[int]]  # reader layer -> the group channels it reads, ascending


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
