"""Whole layers of a layer stack that can go: transformer layers, where torch.fx cannot trace the model.

A transformer is a list of layers (an ``nn.ModuleList`` of one class) each of which maps the hidden
states to hidden states of the same shape, adding its attention and MLP to a residual stream:
``h + f(h)``. Removing a layer leaves ``h`` (Shortened LLaMA, Minitron's depth pruning), which is
the residual block drop the fx analysis finds in CNNs, one level up: the module, not an add node.
Hugging Face models are not fx-traceable, so these blocks are found with forward hooks on the
example input, and dropped by deleting list entries (``transform.layers``), never by rewriting a graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hwprune.graph.groups import ChannelGroup
from hwprune.graph.spans import Block


def stack_blocks(model: nn.Module, example_input: torch.Tensor) -> list[Block]:
    """Each element of a same-class ``nn.ModuleList`` (two or more) whose first output has its first
    input's shape on ``example_input``, as a :class:`Block` with no add (the module itself goes)."""
    lists = {name: m for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) >= 2 and len({type(c) for c in m}) == 1}
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}

    def hook_for(path: str):
        def record(_module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            first_in = args[0] if args else kwargs.get("hidden_states")
            first_out = output[0] if isinstance(output, tuple | list) else output
            if isinstance(first_in, torch.Tensor) and isinstance(first_out, torch.Tensor):
                shapes[path] = (first_in.shape, first_out.shape)
        return record

    handles = [child.register_forward_hook(hook_for(f"{name}.{i}"), with_kwargs=True)
               for name, stack in lists.items() for i, child in enumerate(stack)]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    blocks = []
    for name, stack in lists.items():
        paths = [f"{name}.{i}" for i in range(len(stack))]
        if not all(p in shapes and shapes[p][0] == shapes[p][1] for p in paths):
            continue
        for path, child in zip(paths, stack, strict=True):
            layers = tuple(f"{path}.{sub}" for sub, m in child.named_modules()
                           if sub and isinstance(m, nn.Linear | nn.Conv2d))
            if layers:
                blocks.append(Block(path, None, layers))
    return blocks


def stack_ties(groups: Sequence[ChannelGroup], blocks: Sequence[Block]) -> dict[str, tuple[str, ...]]:
    """Prunable groups that play one role in every layer of a stack (the same path below the layer,
    the same kind and width), keyed ``<stack>.*.<path>``: what a transformers config can hold is one
    width per role for all layers (Minitron prunes the same way), so these keep one count together."""
    stacks = {b.name.rpartition(".")[0] for b in blocks if b.add is None}
    roles: dict[str, list[tuple[int, ChannelGroup]]] = {}
    for group in groups:
        for stack in stacks:
            index, dot, rest = group.id.removeprefix(f"{stack}.").partition(".")
            if group.prunable and group.id.startswith(f"{stack}.") and index.isdigit() and dot:
                roles.setdefault(f"{stack}.*.{rest}", []).append((int(index), group))
    return {role: tuple(g.id for _, g in sorted(alike, key=lambda pair: pair[0])) for role, alike in roles.items()
            if len(alike) > 1 and len({(g.kind, g.channels) for _, g in alike}) == 1}
