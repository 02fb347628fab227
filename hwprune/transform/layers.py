"""Whole layers removed from a layer stack (``graph.stack``): list entries deleted, the rest renumbered.

A transformer layer knows its position (``layer_idx`` on its attention, which the KV cache is
indexed by), so after a deletion every remaining layer whose modules carried their old position
carries its new one; and a transformers config the model reads as it runs (``num_hidden_layers``,
``layer_types``: Qwen2 picks each layer's attention mask from it) is cut to the kept layers. The
pass works on a copy: the caller's model keeps all its layers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from hwprune.graph.spans import Block
from hwprune.transform.passes import Pass, TransformError, run_passes


@dataclass
class LayerStack:
    """The model under change and the stack layers to remove (their module paths)."""

    model: nn.Module
    blocks: Sequence[Block]


def drop_layers(model: nn.Module, blocks: Sequence[Block]) -> nn.Module:
    """A copy of ``model`` without the stack layers ``blocks`` (each ``add`` is None)."""
    surgery = LayerStack(copy.deepcopy(model), blocks)
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
        by_stack: dict[str, set[int]] = {}
        for block in surgery.blocks:
            parent, _, index = block.name.rpartition(".")
            by_stack.setdefault(parent, set()).add(int(index))
        for parent, gone in by_stack.items():
            stack = surgery.model.get_submodule(parent)
            kept = [(old, layer) for old, layer in enumerate(stack) if old not in gone]
            for new, (old, layer) in enumerate(kept):
                for module in layer.modules():
                    if getattr(module, "layer_idx", None) == old:
                        module.layer_idx = new
            owner, _, attribute = parent.rpartition(".")
            setattr(surgery.model.get_submodule(owner), attribute, nn.ModuleList(layer for _, layer in kept))
            _cut_configs(surgery.model, len(stack), [old for old, _ in kept])
        return bool(by_stack)

    def ensures(self, surgery: LayerStack) -> None:
        for parent in {b.name.rpartition(".")[0] for b in surgery.blocks}:
            for i, layer in enumerate(surgery.model.get_submodule(parent)):
                if any(getattr(m, "layer_idx", i) != i for m in layer.modules()):
                    raise TransformError(f"{parent}.{i}: its layer_idx is not its position")


def _cut_configs(model: nn.Module, count: int, kept: list[int]) -> None:
    """Every config of ``model`` that describes a stack of ``count`` layers, cut to the ``kept`` ones."""
    seen: set[int] = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or id(config) in seen or getattr(config, "num_hidden_layers", None) != count:
            continue
        seen.add(id(config))
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == count:
            config.layer_types = [types[i] for i in kept]
        config.num_hidden_layers = len(kept)
