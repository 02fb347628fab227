"""The module an unconstrained export puts in front of a reader: it reads a subset of its input's channels.

It lives with the graph's other module types (``attention.HeadAttention``) because both the
transform that inserts it and the cost model that prices it must recognise it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


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
