"""Which ops of a model cost time, and which channel groups set their sizes.

The latency of a pruned model is predicted per conv/linear layer from its (c_in, c_out), so each
layer is linked to the group that sets its output channels and to every group whose channels it
reads (none: the model input; several: a concatenation, as in Inception and DenseNet; one
spread over many inputs: a flatten in front of a linear layer, or an attention head's width).
A layer's input width is its unpruned width minus what each of those groups removes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.graph.analyze import Analysis
from hwprune.graph.attention import HeadAttention
from hwprune.latency.signature import OpSignature


@dataclass(frozen=True)
class GroupInput:
    """A group whose channels a layer reads: ``size`` units, each ``width`` input positions wide."""

    group: str
    size: int
    width: int = 1


@dataclass(frozen=True)
class Layer:
    """One timed op: its unpruned signature and the groups that size it."""

    name: str
    signature: OpSignature
    out_group: str | None
    inputs: tuple[GroupInput, ...] = ()
    depthwise: bool = False
    channels_per_unit_out: int = 1

    def c_out(self, keep: dict[str, int]) -> int:
        """Output width with ``keep[group]`` units kept (absent groups whole)."""
        if self.out_group in keep:
            return keep[self.out_group] * self.channels_per_unit_out
        return self.signature.c_out

    def c_in(self, keep: dict[str, int]) -> int:
        """Input width with ``keep[group]`` units kept per group (absent groups whole)."""
        removed = sum((g.size - keep[g.group]) * g.width for g in self.inputs if g.group in keep)
        return self.signature.c_in - removed


def layer_signatures(model: nn.Module, example_input: torch.Tensor, dtype: str = "fp32") -> dict[str, OpSignature]:
    """The OpSignature of every Conv2d and Linear module, from one forward."""
    found: dict[str, OpSignature] = {}
    for name, (module, shape) in input_shapes(model, example_input, (nn.Conv2d, nn.Linear)).items():
        if isinstance(module, nn.Conv2d):
            found[name] = OpSignature(
                "conv2d", shape[0], module.in_channels, module.out_channels, shape[2], shape[3],
                module.kernel_size[0], module.stride[0], _padding(module), module.dilation[0], module.groups, dtype)
        else:
            rows = int(torch.tensor(shape[1:-1]).prod()) if len(shape) > 2 else 1
            found[name] = OpSignature("linear", shape[0], module.in_features, module.out_features, rows, 1,
                                      dtype=dtype)
    return found


def input_shapes(model: nn.Module, example_input: torch.Tensor, kinds: tuple[type, ...]
                 ) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """Every ``kinds`` module's first input shape in one forward on ``example_input`` (hooks)."""
    found: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}

    def hook_for(name: str):
        def record(module: nn.Module, inputs: tuple, _output: object) -> None:
            found[name] = (module, tuple(inputs[0].shape))
        return record

    handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return found


def _padding(conv: nn.Conv2d) -> int:
    if isinstance(conv.padding, str):  # "same" / "valid"
        return conv.dilation[0] * (conv.kernel_size[0] - 1) // 2 if conv.padding == "same" else 0
    return conv.padding[0]


def model_layers(analysis: Analysis, dtype: str = "fp32") -> list[Layer]:
    """Every timed layer of the analysed (unpruned) model with the groups that size it."""
    signatures = layer_signatures(analysis.model, analysis.capture.example_input, dtype)
    out_group: dict[str, str] = {}
    out_units: dict[str, int] = {}
    reads: dict[str, list[tuple[str, int, int | None]]] = {}  # (group, size, width if known)
    for group in analysis.groups:
        if group.kind == "heads":
            attention = analysis.model.get_submodule(group.id.removesuffix(":heads"))
            assert isinstance(attention, HeadAttention)
            for name in group.producers:
                out_group[name] = group.id
                out_units[name] = attention.head_dim
            reads.setdefault(group.layers[-1], []).append((group.id, group.channels, attention.head_dim))
            continue
        for name in group.layers:
            if name in group.producers:
                out_group.setdefault(name, group.id)
            elif group.prunable and all(g != group.id for g, _, _ in reads.get(name, [])):
                # a group that cannot be pruned never changes a reader's width
                reads.setdefault(name, []).append((group.id, group.channels, None))
    layers = []
    for name, sig in signatures.items():
        depthwise = sig.op == "conv2d" and sig.groups == sig.c_in == sig.c_out and sig.groups > 1
        inputs = () if depthwise else _group_inputs(sig, reads.get(name, []))
        layers.append(Layer(name, sig, out_group.get(name), inputs, depthwise, out_units.get(name, 1)))
    return layers


def _group_inputs(sig: OpSignature, reads: list[tuple[str, int, int | None]]) -> tuple[GroupInput, ...]:
    """The groups a layer reads, each with how many input positions one of its units spans: given
    (heads), 1 for each part of a concatenation, or c_in / size for a single flattened group."""
    if len(reads) == 1 and reads[0][2] is None and sig.c_in % reads[0][1] == 0:
        group, size, _ = reads[0]
        return (GroupInput(group, size, sig.c_in // size),)
    inputs = tuple(GroupInput(group, size, width or 1) for group, size, width in reads)
    if sum(g.size * g.width for g in inputs) > sig.c_in:
        raise HwpruneError(f"layer reads more grouped channels than its {sig.c_in} inputs: "
                           f"{', '.join(g.group for g in inputs)}")
    return inputs
