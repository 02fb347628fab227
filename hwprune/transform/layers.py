"""Whole layers removed from a layer stack (``graph.stack``): list entries deleted, the rest renumbered.

``graph.stack.without_layers`` does the surgery (the analysis uses it to check that removing a layer
is what skipping it computes); this pass checks the plan's layers are stack layers before, and after
that they are gone and every kept layer's ``layer_idx`` is its position. The result is a copy sharing
the caller's weights: the caller's model keeps all its layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from hwprune.graph.candidates import Block
from hwprune.graph.stack import without_layers
from hwprune.transform.passes import Pass, TransformError, run_passes


@dataclass
class LayerStack:
    """The model under change and the stack layers to remove (their module paths)."""

    model: nn.Module
    blocks: Sequence[Block]


def drop_layers(model: nn.Module, blocks: Sequence[Block]) -> nn.Module:
    """``model`` without the stack layers ``blocks`` (each ``add`` is None), as a new module."""
    surgery = LayerStack(model, blocks)
    run_passes([DropLayers()], surgery)
    return surgery.model


class DropLayers(Pass[LayerStack]):
    name = "drop-layers"

    def requires(self, surgery: LayerStack) -> None:
        for block in surgery.blocks:
            parent, _, index = block.name.rpartition(".")
            if block.add is not None or not index.isdigit() or not isinstance(
                    surgery.model.get_submodule(parent), nn.ModuleList):
                raise TransformError(f"{block.name} is not a layer of a layer stack")

    def call(self, surgery: LayerStack) -> bool:
        surgery.model = without_layers(surgery.model, [block.name for block in surgery.blocks])
        return bool(surgery.blocks)

    def ensures(self, surgery: LayerStack) -> None:
        for parent in {b.name.rpartition(".")[0] for b in surgery.blocks}:
            for i, layer in enumerate(surgery.model.get_submodule(parent)):
                if any(getattr(m, "layer_idx", i) != i for m in layer.modules()):
                    raise TransformError(f"{parent}.{i}: its layer_idx is not its position")
