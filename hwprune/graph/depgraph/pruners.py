"""hwprune's interface for a layer torch-pruning does not know, and its registration through torch-pruning's
extension point (``customized_pruners``).

A module that hwprune traces as one op (an opaque block kept at its width, transformers' RMSNorm and
grouped-query attention pruned at their ends) needs a pruner that reports its channel counts and removes
channels. Those pruners implement :class:`ChannelPruner`, which is hwprune's own, so their modules (graph.opaque,
frontends.hf) never import torch-pruning; :func:`as_customized` wraps them in torch-pruning's pruning-function
class when the dependency graph is built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from torch import nn
from torch_pruning.pruner.function import BasePruningFunc


class ChannelPruner(ABC):
    """Reports and removes one module type's input and output channels, along ``dim`` of its tensors. A pruner
    whose ``prune_in`` is its ``prune_out`` (one width, as a norm's) couples its input and output channels."""

    dim: int = -1

    @abstractmethod
    def in_channels(self, layer: nn.Module) -> int | None:
        """The module's input channel count (None: not known for this instance)."""

    @abstractmethod
    def out_channels(self, layer: nn.Module) -> int | None:
        """The module's output channel count (None: not known for this instance)."""

    @abstractmethod
    def prune_in(self, layer: nn.Module, removed: Sequence[int]) -> None:
        """Remove input channels ``removed`` in place (or raise PlanError if the module is kept whole)."""

    @abstractmethod
    def prune_out(self, layer: nn.Module, removed: Sequence[int]) -> None:
        """Remove output channels ``removed`` in place (or raise PlanError if the module is kept whole)."""


class _Customized(BasePruningFunc):
    """A :class:`ChannelPruner` as torch-pruning's pruning function."""

    def __init__(self, pruner: ChannelPruner) -> None:
        super().__init__(pruning_dim=pruner.dim)
        self.pruner = pruner
        if type(pruner).prune_in is type(pruner).prune_out:
            # torch-pruning couples a layer's input and output where its two pruning functions are one
            self.prune_in_channels = self.prune_out_channels

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        self.pruner.prune_out(layer, idxs)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        self.pruner.prune_in(layer, idxs)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return self.pruner.out_channels(layer)

    def get_in_channels(self, layer: nn.Module) -> int | None:
        return self.pruner.in_channels(layer)


def as_customized(pruners: dict[type, ChannelPruner]) -> dict[type, BasePruningFunc]:
    """``pruners`` as torch-pruning's ``customized_pruners`` argument."""
    wrapped: dict[int, _Customized] = {}
    return {kind: wrapped.setdefault(id(p), _Customized(p)) for kind, p in pruners.items()}
