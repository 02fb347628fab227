"""The copy ops a realised unconstrained model runs (one per ChannelSelect), as signatures to price."""

from __future__ import annotations

import torch
from torch import nn

from hwprune.cost.layers import input_shapes
from hwprune.cost.signature import OpSignature
from hwprune.graph.select import ChannelSelect


def copy_signatures(model: nn.Module, example_input: torch.Tensor) -> dict[str, OpSignature]:
    """Per ChannelSelect in ``model`` (by module name), the copy op it exports as, at the size one
    forward on ``example_input`` shows: what the latency table must price."""
    found = {}
    for name, (select_, shape) in input_shapes(model, example_input, (ChannelSelect,)).items():
        rest = list(shape)
        width = rest.pop(select_.dim)
        batch, rest = rest[0], rest[1:]
        h, w = (rest[0], rest[1]) if len(rest) == 2 else (int(torch.tensor(rest).prod()) if rest else 1, 1)
        found[name] = OpSignature("slice" if select_.contiguous else "gather", batch, width, select_.index.numel(),
                                  h, w)
    return found
