"""Whole layers of a layer stack that can go: transformer layers, where torch.fx cannot trace the model.

A transformer is a list of layers (an ``nn.ModuleList`` of one class) each of which maps the hidden
states to hidden states of the same shape, adding its attention and MLP to a residual stream:
``h + f(h)``. Removing a layer leaves ``h`` (Shortened LLaMA, Minitron's depth pruning), which is
the residual block drop the fx analysis finds in CNNs, one level up: the module, not an add node.
Hugging Face models are not fx-traceable, so these blocks are found with forward hooks on the
example input, and dropped by deleting list entries (:func:`without_layers`, which ``transform.layers``
applies), never by rewriting a graph.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from hwprune.graph.candidates import Block
from hwprune.graph.groups import ChannelGroup
from hwprune.graph.hooks import run_hooked


def stack_blocks(model: nn.Module, example_input: torch.Tensor) -> list[Block]:
    """Each layer of a layer stack, as a :class:`Block` with no add (the module itself goes). A stack is
    a same-class ``nn.ModuleList`` of two or more layers, each fed the one before's output and keeping
    its shape on ``example_input``, where removing a layer (:func:`without_layers`) computes exactly what
    the model computes with that layer handing its input on; a list whose layers are read otherwise
    (YOLO's C2f concatenates every one's output) is no stack."""
    lists = {name: m for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) >= 2 and len({type(c) for c in m}) == 1}
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook_for(path: str):
        def record(_module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            first_in, first_out = hidden_in(args, kwargs), hidden_out(output)
            if isinstance(first_in, torch.Tensor) and isinstance(first_out, torch.Tensor):
                seen[path] = (first_in, first_out)
        return record

    run_hooked(model, example_input, {child: hook_for(f"{name}.{i}") for name, stack in lists.items()
                                       for i, child in enumerate(stack)}, with_kwargs=True)
    blocks = []
    for name, stack in lists.items():
        paths = [f"{name}.{i}" for i in range(len(stack))]
        if not all(p in seen and seen[p][0].shape == seen[p][1].shape for p in paths) or any(
                seen[b][0] is not seen[a][1] for a, b in zip(paths, paths[1:], strict=False)):
            continue
        if not _removal_is_skipping(model, stack[1], paths[1], example_input):
            continue
        for path, child in zip(paths, stack, strict=True):
            layers = tuple(f"{path}.{sub}" for sub, m in child.named_modules()
                           if sub and isinstance(m, nn.Linear | nn.Conv2d))
            if layers:
                blocks.append(Block(path, None, layers))
    return blocks


def without_layers(model: nn.Module, paths: Sequence[str]) -> nn.Module:
    """A copy of ``model`` (sharing its weights) without the stack layers at ``paths``: list entries
    deleted, each remaining layer's ``layer_idx`` (what the KV cache is indexed by) set to its new
    position where it was its old one, and every transformers config describing the stack
    (``num_hidden_layers``, ``layer_types``: Qwen2 picks each layer's mask from it) cut to the kept layers."""
    model = copy.deepcopy(model, memo={id(t): t for t in (*model.parameters(), *model.buffers())})
    by_stack: dict[str, set[int]] = {}
    for path in paths:
        parent, _, index = path.rpartition(".")
        by_stack.setdefault(parent, set()).add(int(index))
    for parent, gone in by_stack.items():
        stack = model.get_submodule(parent)
        kept = [(old, layer) for old, layer in enumerate(stack) if old not in gone]
        for new, (old, layer) in enumerate(kept):
            for module in layer.modules():
                if getattr(module, "layer_idx", None) == old:
                    module.layer_idx = new
        owner, _, attribute = parent.rpartition(".")
        setattr(model.get_submodule(owner), attribute, nn.ModuleList(layer for _, layer in kept))
        _cut_configs(model, len(stack), [old for old, _ in kept])
    return model


def _cut_configs(model: nn.Module, count: int, kept: list[int]) -> None:
    """Every config of ``model`` that describes a stack of ``count`` layers, cut to the ``kept`` ones."""
    done: set[int] = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or id(config) in done or getattr(config, "num_hidden_layers", None) != count:
            continue
        done.add(id(config))
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == count:
            config.layer_types = [types[i] for i in kept]
        config.num_hidden_layers = len(kept)


def _removal_is_skipping(model: nn.Module, layer: nn.Module, path: str, example_input: torch.Tensor) -> bool:
    """Whether the model without ``layer`` computes what it computes with ``layer`` handing its input on."""
    def hand_on(_module: nn.Module, args: tuple, kwargs: dict, output: object) -> object:
        hidden = hidden_in(args, kwargs)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    skipped = _flat(run_hooked(model, example_input, {layer: hand_on}, with_kwargs=True))
    try:
        with torch.no_grad():
            removed = _flat(without_layers(model, [path])(example_input))
    except Exception:  # the model cannot run without it: not a stack layer
        return False
    scale = float(skipped.abs().max()) or 1.0
    return removed.shape == skipped.shape and float((removed - skipped).abs().max()) <= 1e-5 * scale


def hidden_in(args: tuple, kwargs: dict) -> object:
    """A stack layer's hidden-state input, as a forward hook sees it (transformers passes it by keyword)."""
    return args[0] if args else kwargs.get("hidden_states")


def hidden_out(output: object) -> object:
    """A stack layer's hidden-state output (the first item where it returns a tuple)."""
    return output[0] if isinstance(output, tuple | list) else output


def _flat(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output.flatten()
    return torch.cat([_flat(item) for item in output if isinstance(item, torch.Tensor | tuple | list)])


def stack_ties(groups: Sequence[ChannelGroup], layers: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Prunable groups that play one role in every layer of a stack (the same path below the layer,
    the same kind and width), keyed ``<stack>.*.<path>``: what a transformers config can hold is one
    width per role for all layers (Minitron prunes the same way), so these keep one count together."""
    stacks = {name.rpartition(".")[0] for name in layers}
    roles: dict[str, list[tuple[int, ChannelGroup]]] = {}
    for group in groups:
        for stack in stacks:
            index, dot, rest = group.id.removeprefix(f"{stack}.").partition(".")
            if group.prunable and group.id.startswith(f"{stack}.") and index.isdigit() and dot:
                roles.setdefault(f"{stack}.*.{rest}", []).append((int(index), group))
    return {role: tuple(g.id for _, g in sorted(alike, key=lambda pair: pair[0])) for role, alike in roles.items()
            if len(alike) > 1 and len({(g.kind, g.channels) for _, g in alike}) == 1}
