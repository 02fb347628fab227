"""Constants a model keeps outside its layers, and the dim along which each carries a group's channels.

Models converted from ONNX keep per-channel scales, offsets and positional tensors as buffers, which
torch-pruning cannot see; as parameters it traces them and slices each along its last non-singleton dim.
That is the channel dim only for some shapes: a ``(1, 1, H, W)`` spatial map holds no channels, a
``(1, C, H, W)`` constant holds them along dim 1. :func:`constant_dims` finds the right dim (or none)
from the tensors each constant meets, and :func:`leave_constants_alone` makes a buffer again of one that
holds none.
"""

from __future__ import annotations

from torch import nn

from hwprune.graph import depgraph as tp
from hwprune.graph.depgraph import OPTYPE


def channel_constants_as_parameters(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Turn floating buffers of two or more dims held outside normalisation layers (per-channel
    scales, offsets, gates, positional tensors: what models converted from ONNX keep as constants)
    into frozen parameters; returns (owner, name) of each.

    torch-pruning follows unwrapped parameters (``x * scale + shift``) and prunes them with the
    channels they meet, but cannot see buffers: a group would shrink and the buffer would not, and
    the pruned model would fail to broadcast. As a parameter (``requires_grad`` False, the same
    name in the state dict) it is traced, pruned and silenced with its group. One that turns out to
    hold no channels (size 1 along the channel axis of the tensor it meets: a spatial map) is made a
    buffer again after the first trace (:func:`constant_dims`).
    """
    converted = []
    for owner in model.modules():
        if isinstance(owner, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
            continue
        for name, buffer in list(owner._buffers.items()):
            if buffer is None or not buffer.is_floating_point() or buffer.dim() < 2 or buffer.numel() < 2:
                continue
            del owner._buffers[name]
            owner.register_parameter(name, nn.Parameter(buffer.detach().clone(), requires_grad=False))
            converted.append((owner, name))
    return converted




_BROADCASTING = ("AddBackward", "SubBackward", "RsubBackward", "MulBackward", "DivBackward",
                 "MaximumBackward", "MinimumBackward")
# Ops that keep the rank but move dims, or mix them: a walk for the channel axis stops at them.
_MOVING = ("Permute", "Transpose", "TBackward", "MmBackward", "BmmBackward", "Addmm", "Baddbmm", "Convolution",
           "Einsum", "Matmul")
_CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
                   nn.modules.instancenorm._InstanceNorm)
_CHANNELS_LAST = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.MultiheadAttention)


def constant_dims(graph: tp.DependencyGraph) -> dict[nn.Parameter, int | None]:
    """Each bare parameter that torch-pruning would slice along a dim that does not carry its group's
    channels, with the dim that does (None: it holds no channels and must be left alone).

    torch-pruning slices a bare parameter along its last non-singleton dim. A constant broadcast
    into a layer's output carries the channels along that output's channel axis (1 after a conv,
    the last dim after a linear), aligned from the last dim: a ``(1, 1, H, W)`` map has size 1
    there (every channel meets the same map, so removing channels leaves it whole) and a
    ``(1, C, H, W)`` one is sliced along dim 1, not W. Where the axis cannot be told (the constant
    is reshaped or permuted first, or the tensors it meets disagree) torch-pruning's choice stays.
    """
    dims = {}
    for param, node in graph.module2node.items():
        if node.type != OPTYPE.PARAMETER:
            continue
        found = {_channel_dim(tuple(param.shape), consumer) for consumer in node.outputs}
        if len(found) != 1:
            continue
        dim = found.pop()
        if dim != "unknown" and dim != node.pruning_dim:
            dims[param] = dim
    return dims


def _channel_dim(constant: tuple[int, ...], consumer) -> int | None | str:
    """The dim of ``constant`` along which it meets the channels of the tensor ``consumer`` broadcasts
    it against (None: size 1 or absent there), or ``"unknown"``."""
    out = _out_shape(consumer)
    if consumer.type != OPTYPE.ELEMENTWISE or not _op_name(consumer).startswith(_BROADCASTING) \
            or out is None or len(constant) > len(out):
        return "unknown"
    offset = len(out) - len(constant)
    if any(size not in (1, out[offset + d]) for d, size in enumerate(constant)):
        return "unknown"
    axes = _channel_axes(consumer, len(out), upward=True) or _channel_axes(consumer, len(out), upward=False)
    if len(axes) != 1:
        return "unknown"
    dim = axes.pop() - offset
    return dim if dim >= 0 and constant[dim] > 1 else None


def _channel_axes(start, rank: int, upward: bool, limit: int = 64) -> set[int]:
    """The channel axis of ``start``'s output (1 or ``rank - 1``), from the layers found walking up
    (the layers that wrote it) or down (those that read it) through ops that keep every dim in place."""
    axes: set[int] = set()
    seen, stack = {start}, [start]
    while stack and len(seen) < limit:
        node = stack.pop()
        for other in (node.inputs if upward else node.outputs):
            if other in seen or other.type == OPTYPE.PARAMETER:
                continue
            seen.add(other)
            module, same_rank = other.module, len(_out_shape(other) or ()) == rank
            if isinstance(module, _CHANNELS_FIRST):
                axes.update([1] if same_rank else [1, rank - 1])  # not the same rank: cannot tell
            elif isinstance(module, _CHANNELS_LAST):
                axes.add(rank - 1)
            elif other.type in (OPTYPE.ELEMENTWISE, OPTYPE.CONCAT, OPTYPE.SPLIT, OPTYPE.SLICE) and same_rank \
                    and not _op_name(other).startswith(_MOVING):
                stack.append(other)
    return axes


def _op_name(node) -> str:
    name = getattr(node.grad_fn, "name", None)
    return name() if callable(name) else ""


def _out_shape(node) -> tuple[int, ...] | None:
    metadata = getattr(node.grad_fn, "_input_metadata", None)
    return tuple(int(d) for d in metadata[0].shape) if metadata else None


def leave_constants_alone(converted: list[tuple[nn.Module, str]], params: list[nn.Parameter]
                           ) -> tuple[nn.Parameter, ...]:
    """Make the converted buffers among ``params`` buffers again; the others (the model's own
    parameters) are returned, to be kept out of the next trace."""
    ids = {id(p) for p in params}
    for owner, name in converted:
        param = owner._parameters.get(name)
        if param is not None and id(param) in ids:
            ids.discard(id(param))
            del owner._parameters[name]
            owner.register_buffer(name, param.detach())
    return tuple(p for p in params if id(p) in ids)
