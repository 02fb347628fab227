"""A layer's epilogue: the per-channel constant scales and shifts that alone read its output.

A BatchNorm that a converter wrote as Mul then Add (paddle2onnx, tf2onnx), or a layer scale ``gamma * x``
(ConvNeXt, CaiT), costs time in proportion to the layer's output channels, so the latency model times it
with the layer (``OpSignature.epilogue``) instead of leaving it in the model's untimed rest. Pruning
already slices such constants with the layer's channels (``graph.constants.channel_constants_as_parameters``
makes them parameters, which torch-pruning prunes with their group).
"""

from __future__ import annotations

from torch import nn

from hwprune.graph.capture import Capture
from hwprune.graph.depgraph import OPTYPE

# autograd's name for each op an epilogue may hold, and the epilogue's word for it (``cost.signature``)
EPILOGUE_GRAD_FNS = {"MulBackward0": "mul", "AddBackward0": "add"}
LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def epilogues(capture: Capture) -> dict[str, str]:
    """Layer name -> its epilogue (``mul``, ``add``, ``mul_add``, ...) for each conv/linear layer whose output
    is read only by a chain of Mul/Add ops with a constant laid along its channels (a layer with none is absent).
    """
    graph = capture.dependency_graph
    found = {}
    for module, node in graph.module2node.items():
        if not isinstance(module, LAYERS):
            continue
        shape = capture.ops.nodes[node.name]["shape"]
        if shape is None:
            continue
        axis = len(shape) - 1 if isinstance(module, nn.Linear) else 1
        ops, current = [], node
        while len({out.name for out in current.outputs}) == 1 and (
                op := _constant_op(current.outputs[0], current, shape, axis)):
            ops.append(op)
            current = current.outputs[0]
        if ops:
            found[graph._module2name[module]] = "_".join(ops)
    return found


def _constant_op(node, source, shape: tuple[int, ...], axis: int) -> str | None:
    """The epilogue word of ``node`` when it is a Mul/Add of ``source`` and one per-channel constant, else None."""
    if node.type != OPTYPE.ELEMENTWISE or node.grad_fn.name() not in EPILOGUE_GRAD_FNS:
        return None
    others = [n for n in node.inputs if n is not source]
    if len(node.inputs) != 2 or len(others) != 1 or others[0].type != OPTYPE.PARAMETER:
        return None
    if not per_channel(tuple(others[0].module.shape), shape, axis):
        return None
    return EPILOGUE_GRAD_FNS[node.grad_fn.name()]


def per_channel(constant: tuple[int, ...], output: tuple[int, ...], axis: int) -> bool:
    """Whether ``constant``, broadcast against ``output`` (aligned at the last dim), holds one value per channel
    along ``axis`` and is 1 along every other dim (``(C,)`` after a linear, ``(C, 1, 1)`` or ``(1, C, 1, 1)`` after
    a conv)."""
    if len(constant) > len(output):
        return False
    aligned = (1,) * (len(output) - len(constant)) + constant
    return all(size == (output[axis] if dim == axis else 1) for dim, size in enumerate(aligned))
