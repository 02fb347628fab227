"""Which ops of a model cost time, and which channel groups set their sizes.

The latency of a pruned model is predicted per conv/linear layer from its (c_in, c_out), so each
layer is linked to the group that sets its output channels and the group that sets its input
channels (either may be absent: the model input, a non-prunable group).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hwprune.graph.analyze import Analysis
from hwprune.graph.attention import HeadAttention
from hwprune.latency.signature import OpSignature


@dataclass(frozen=True)
class Layer:
    """One timed op: its unpruned signature and the groups that size it."""

    name: str
    signature: OpSignature
    in_group: str | None
    out_group: str | None
    depthwise: bool = False
    channels_per_unit_in: int = 1
    channels_per_unit_out: int = 1


def layer_signatures(model: nn.Module, example_input: torch.Tensor, dtype: str = "fp32") -> dict[str, OpSignature]:
    """The OpSignature of every Conv2d and Linear module, from one forward with hooks."""
    found: dict[str, OpSignature] = {}

    def hook_for(name: str):
        def record(module: nn.Module, inputs: tuple, _output: object) -> None:
            shape = tuple(inputs[0].shape)
            if isinstance(module, nn.Conv2d):
                found[name] = OpSignature(
                    "conv2d", shape[0], module.in_channels, module.out_channels, shape[2], shape[3],
                    module.kernel_size[0], module.stride[0], _padding(module), module.dilation[0], module.groups, dtype)
            else:
                rows = int(torch.tensor(shape[1:-1]).prod()) if len(shape) > 2 else 1
                found[name] = OpSignature("linear", shape[0], module.in_features, module.out_features, rows, 1,
                                          dtype=dtype)
        return record

    handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]
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
    in_group: dict[str, str] = {}
    units: dict[str, tuple[int, int]] = {}
    for group in analysis.groups:
        if group.kind == "heads":
            attention = analysis.model.get_submodule(group.id.removesuffix(":heads"))
            assert isinstance(attention, HeadAttention)
            for name in group.producers:
                out_group[name] = group.id
                units[name] = (1, attention.head_dim)
            in_group[group.layers[-1]] = group.id
            units[group.layers[-1]] = (attention.head_dim, 1)
            continue
        for name in group.layers:
            if name in group.producers:
                out_group.setdefault(name, group.id)
            else:
                in_group.setdefault(name, group.id)
    layers = []
    for name, sig in signatures.items():
        depthwise = sig.op == "conv2d" and sig.groups == sig.c_in == sig.c_out and sig.groups > 1
        per_in, per_out = units.get(name, (1, 1))
        source = out_group.get(name) if depthwise else in_group.get(name)
        layers.append(Layer(name, sig, source, out_group.get(name), depthwise, per_in, per_out))
    return layers
