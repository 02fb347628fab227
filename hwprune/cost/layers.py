"""Which ops of a model cost time, and which channel groups set their sizes.

The latency of a pruned model is predicted per conv/linear layer from its (c_in, c_out), so each
layer is linked to the group that sets its output channels and to every group whose channels it
reads (none: the model input; several: a concatenation, as in Inception and DenseNet; one
spread over many inputs: a flatten in front of a linear layer, or an attention head's width).
A layer's input width is its unpruned width minus what each of those groups removes.

Each attention module's core (softmax(Q K^T) V, an ``attention`` signature) is timed too, as the
layer ``<module>:core``, sized by the module's heads group: removing heads saves its time, and
removing a whole layer, which takes every timed op under the layer's path, takes it with it.

A layer whose output only per-channel constant Mul/Add ops read (``graph.epilogue``) is timed with them: its
signature names them (``OpSignature.epilogue``), so the profiler times the layer and its epilogue together, as
the runtime runs them in the model, fused or not.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction

import torch
from torch import nn

from hwprune.cost.signature import ATTENTION, CONV_OPS, OpSignature
from hwprune.errors import HwpruneError
from hwprune.graph.analyze import Analysis
from hwprune.graph.epilogue import epilogues
from hwprune.graph.heads import HEADS_SUFFIX, Heads, group_heads
from hwprune.graph.hooks import run_hooked


@dataclass(frozen=True)
class GroupInput:
    """A group whose channels a layer reads: ``size`` units spread over ``positions`` input
    positions (``size`` for a plain read; ``size`` x the spatial size behind a flatten; a heads'
    width; one piece of a chunk; a channel read twice)."""

    group: str
    size: int
    positions: int

    def removed(self, keep: int) -> int:
        """Input positions gone with ``keep`` units kept (units leave every piece evenly)."""
        return (self.size - keep) * self.positions // self.size


@dataclass(frozen=True)
class Layer:
    """One timed op: its unpruned signature and the groups that size it."""

    name: str
    signature: OpSignature
    out_group: str | None
    inputs: tuple[GroupInput, ...] = ()
    depthwise: bool = False  # one channel axis, c_in = c_out: a depthwise conv, or attention's core (heads)
    out_scale: Fraction = Fraction(1)  # output channels per kept unit: a head's width; 1/2 for half a chunk

    def c_out(self, keep: dict[str, int]) -> int:
        """Output width with ``keep[group]`` units kept (absent groups whole)."""
        if self.out_group in keep:
            return int(keep[self.out_group] * self.out_scale)
        return self.signature.c_out

    def c_in(self, keep: dict[str, int]) -> int:
        """Input width with ``keep[group]`` units kept per group (absent groups whole)."""
        removed = sum(g.removed(keep[g.group]) for g in self.inputs if g.group in keep)
        return self.signature.c_in - removed


def layer_signatures(model: nn.Module, example_input: torch.Tensor, dtype: str = "fp32") -> dict[str, OpSignature]:
    """The OpSignature of every Conv2d, ConvTranspose2d and Linear module, from one forward."""
    found: dict[str, OpSignature] = {}
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    for name, (module, shape) in input_shapes(model, example_input, kinds).items():
        if isinstance(module, nn.Conv2d):
            found[name] = OpSignature(
                "conv2d", shape[0], module.in_channels, module.out_channels, shape[2], shape[3],
                module.kernel_size[0], module.stride[0], _padding(module), module.dilation[0], module.groups, dtype)
        elif isinstance(module, nn.ConvTranspose2d):
            found[name] = OpSignature(
                "conv_transpose2d", shape[0], module.in_channels, module.out_channels, shape[2], shape[3],
                module.kernel_size[0], module.stride[0], module.padding[0], module.dilation[0], module.groups, dtype,
                output_padding=module.output_padding[0])
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

    run_hooked(model, example_input, {m: hook_for(n) for n, m in model.named_modules() if isinstance(m, kinds)})
    return found


def _padding(conv: nn.Conv2d) -> int:
    if isinstance(conv.padding, str):  # "same" / "valid"
        return conv.dilation[0] * (conv.kernel_size[0] - 1) // 2 if conv.padding == "same" else 0
    return conv.padding[0]


def model_layers(analysis: Analysis, dtype: str = "fp32") -> list[Layer]:
    """Every timed layer of the analysed (unpruned) model, with its epilogue, and the groups that size it."""
    found = epilogues(analysis.capture)
    signatures = {name: replace(sig, epilogue=found.get(name, ""))
                  for name, sig in layer_signatures(analysis.model, analysis.capture.example_input, dtype).items()}
    out_group: dict[str, str] = {}
    out_scale: dict[str, Fraction] = {}
    reads: dict[str, list[GroupInput]] = {}
    cores = []
    for group in analysis.groups:
        if group.kind == "heads":
            heads = group_heads(analysis.model, group.id)
            q, k, v, o = group.layers
            for name, width in ((q, heads.queries * heads.head_dim), (k, heads.head_dim), (v, heads.head_dim)):
                out_group[name] = group.id
                out_scale[name] = Fraction(width)
            reads.setdefault(o, []).append(GroupInput(group.id, group.channels, heads.query_heads * heads.head_dim))
            if q in signatures and k in signatures:
                cores.append(_core(group.id, heads, signatures[q], signatures[k]))
            continue
        for name in group.producers:
            if name not in out_group:
                out_group[name] = group.id
                out_scale[name] = Fraction(group.positions.get(name, group.channels), group.channels)
        if group.prunable:  # a group that cannot be pruned never changes a reader's width
            for name, positions in group.positions.items():
                if name not in group.producers:
                    reads.setdefault(name, []).append(GroupInput(group.id, group.channels, positions))
    layers = []
    for name, sig in signatures.items():
        depthwise = sig.op in CONV_OPS and sig.groups == sig.c_in == sig.c_out and sig.groups > 1
        inputs = () if depthwise else _group_inputs(sig, reads.get(name, []))
        layers.append(Layer(name, sig, out_group.get(name), inputs, depthwise, out_scale.get(name, Fraction(1))))
    return layers + cores + _fixed_cores(analysis.model, signatures)


def _fixed_cores(model: nn.Module, signatures: dict[str, OpSignature]) -> list[Layer]:
    """The core of each attention kept at its width (GPT-2's fused ``c_attn``), timed at its width so that
    removing its layer takes that time out of the prediction too (it is not left in the untimed rest)."""
    from hwprune.graph.opaque import fixed_width_types

    cores = []
    for name, module in model.named_modules():
        projection = signatures.get(f"{name}.c_attn")
        if not isinstance(module, fixed_width_types()) or projection is None or not hasattr(module, "head_dim"):
            continue
        sig = OpSignature(ATTENTION, projection.batch, module.num_heads, module.num_heads, projection.h,
                          projection.h, kernel=module.head_dim, dtype=projection.dtype,
                          causal=int(getattr(module, "is_causal", False)))
        cores.append(Layer(f"{name}:core", sig, None, depthwise=True))
    return cores


def _core(group_id: str, heads: Heads, query: OpSignature, key: OpSignature) -> Layer:
    """The attention core of a heads group's module: the batch and query length of its q projection's input, the
    key length of its k projection's, its query heads set by the units kept."""
    sig = OpSignature(ATTENTION, query.batch, heads.query_heads, heads.query_heads, query.h, key.h,
                      kernel=heads.head_dim, dtype=query.dtype, causal=int(heads.causal))
    name = f"{group_id.removesuffix(HEADS_SUFFIX)}:core"
    return Layer(name, sig, group_id, depthwise=True, out_scale=Fraction(heads.queries))


def _group_inputs(sig: OpSignature, reads: list[GroupInput]) -> tuple[GroupInput, ...]:
    """The groups a layer reads, checked against its input width."""
    if sum(g.positions for g in reads) > sig.c_in:
        raise HwpruneError(f"layer reads more grouped channels than its {sig.c_in} inputs: "
                           f"{', '.join(g.group for g in reads)}")
    return tuple(reads)
