"""The analyzer stage: model + example input -> captured graph + coupled channel groups."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from hwprune.errors import PlanError
from hwprune.graph.capture import Capture, capture
from hwprune.graph.groups import ChannelGroup, channel_groups


@dataclass
class Analysis:
    """What the search and the transform need to know about one model."""

    name: str
    capture: Capture
    groups: list[ChannelGroup]

    @property
    def model(self) -> nn.Module:
        return self.capture.model

    def group(self, group_id: str) -> ChannelGroup:
        for group in self.groups:
            if group.id == group_id:
                return group
        raise PlanError(f"no channel group {group_id!r} in {self.name}")

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def refuse(self, group_id: str, reason: str) -> None:
        """Mark a group not prunable, with the reason (a later stage found that it cannot be pruned)."""
        group = self.group(group_id)
        group.prunable, group.reason = False, reason

    def to_json(self) -> dict:
        return {"model": self.name, "input_shape": list(self.capture.example_input.shape),
                "flops": self.capture.flops, "params": self.capture.params,
                "groups": [g.to_json() for g in self.groups]}


def analyze(model: nn.Module, example_input: torch.Tensor, name: str = "model",
            exclude: Iterable[str] = (), strict: bool = True) -> Analysis:
    """Capture ``model`` (in place: attention is made head-prunable) and find its channel groups."""
    cap = capture(model, example_input)
    return Analysis(name=name, capture=cap, groups=channel_groups(cap, exclude=exclude, strict=strict))
