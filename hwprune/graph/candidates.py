"""Depth candidates as data: spans of convolutions that can merge into one, and blocks that can go
(found by ``graph.spans`` on an fx graph, or, for a layer stack, by ``graph.stack``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """Consecutive convolutions of a chain that merge into one once the activations inside go."""

    convs: tuple[str, ...]
    norms: tuple[str | None, ...]
    activations: tuple[str, ...]  # FX nodes removed: the activations between the convs
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    in_channels: int
    out_channels: int
    depthwise: bool
    skip: str | None = None  # the add folded into the centre tap (the span is that block's whole branch)

    @property
    def key(self) -> str:
        return "+".join(self.convs) + (" (with skip)" if self.skip else "")

    def to_json(self) -> dict:
        return {"convs": list(self.convs), "activations": list(self.activations), "skip": self.skip,
                "kernel": list(self.kernel), "stride": list(self.stride), "padding": list(self.padding),
                "in_channels": self.in_channels, "out_channels": self.out_channels, "depthwise": self.depthwise}


@dataclass(frozen=True)
class Block:
    """A residual ``x + f(x)`` whose branch can be dropped."""

    name: str  # the innermost module holding the branch and the add
    add: str | None  # the add's FX node; None: the module is a whole layer of a stack (``graph.stack``)
    layers: tuple[str, ...]  # the branch's modules (what dropping removes)

    def to_json(self) -> dict:
        return {"block": self.name, "add": self.add, "layers": list(self.layers)}


@dataclass
class DepthCandidates:
    spans: list[Span] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    reason: str | None = None  # why there are none, when tracing failed
    chains: list[tuple[str, ...]] = field(default_factory=list)  # each chain's convs, in order

    def to_json(self) -> dict:
        return {"chains": [list(c) for c in self.chains], "spans": [s.to_json() for s in self.spans],
                "blocks": [b.to_json() for b in self.blocks], "reason": self.reason}

    def span(self, convs: Iterable[str], skip: str | None = None) -> Span | None:
        wanted = tuple(convs)
        return next((s for s in self.spans if s.convs == wanted and s.skip == skip), None)

    def block(self, name: str) -> Block | None:
        return next((b for b in self.blocks if b.name == name), None)
