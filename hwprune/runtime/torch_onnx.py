"""ONNX graphs rebuilt as PyTorch ops, so the torch runtime times what the other runtimes time from the
same file: the single-op graphs of latency tables (``cost.onnx_ops``: Conv, ConvTranspose, MatMul + Add,
attention, Gather/Slice copies) and whole exports such as a bench's ONNX file (the ops of CNN and
plain transformer exports). Written on the ``onnx`` package alone, without onnx2torch; any other op is a
one-line error naming it. torch is imported only when a graph is built (the runtime layer stays
importable without it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hwprune.errors import HwpruneError

Op = Callable[..., object]


class OnnxProgram:
    """A torch callable computing an ONNX graph: float initializers as tensors (moved and cast with
    :meth:`to`), integer ones (indices, shapes, axes) folded into the ops as constants."""

    def __init__(self, model: onnx.ModelProto | bytes | str | Path):
        import torch

        if not isinstance(model, onnx.ModelProto):
            model = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
        graph = model.graph
        arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                arrays[node.output[0]] = numpy_helper.to_array(helper.get_attribute_value(node.attribute[0]))
        self.tensors = {name: torch.from_numpy(np.array(a)) for name, a in arrays.items()}
        self.input_names = [i.name for i in graph.input if i.name not in arrays]
        self.inputs = [(tuple(d.dim_value or 1 for d in i.type.tensor_type.shape.dim),
                        i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT)
                       for i in graph.input if i.name not in arrays]
        self.output_names = [o.name for o in graph.output]
        self.steps = [(_op(node, arrays), list(node.input), list(node.output))
                      for node in graph.node if node.op_type != "Constant"]

    def to(self, device: str, dtype) -> OnnxProgram:
        """Float tensors moved to ``device`` as ``dtype``; the others moved only."""
        self.tensors = {n: t.to(device, dtype) if t.is_floating_point() else t.to(device)
                        for n, t in self.tensors.items()}
        return self

    def __call__(self, *inputs):
        values = {**self.tensors, **dict(zip(self.input_names, inputs, strict=True))}
        for op, names, outputs in self.steps:
            result = op(*(values[n] if n else None for n in names))
            for name, value in zip(outputs, result if isinstance(result, tuple) else (result,), strict=False):
                values[name] = value
        out = [values[n] for n in self.output_names]
        return out[0] if len(out) == 1 else tuple(out)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _const(arrays: dict[str, np.ndarray], node: onnx.NodeProto, index: int) -> list[int] | None:
    """An integer input given as an initializer, as a list; None where absent."""
    if len(node.input) <= index or not node.input[index]:
        return None
    if node.input[index] not in arrays:
        raise HwpruneError(f"ONNX {node.op_type} node {node.name!r}: input {index} must be a constant to run in torch")
    return [int(v) for v in np.asarray(arrays[node.input[index]]).reshape(-1)]


def _op(node: onnx.NodeProto, arrays: dict[str, np.ndarray]) -> Op:
    """The torch function computing ``node`` from its runtime inputs (constants folded in)."""
    import torch
    import torch.nn.functional as F

    kind, a = node.op_type, _attrs(node)
    simple = {"Identity": lambda x: x, "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div,
              "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Sqrt": torch.sqrt,
              "Exp": torch.exp, "Neg": torch.neg, "Pow": torch.pow, "MatMul": torch.matmul}
    if kind in simple:
        return simple[kind]
    if kind in ("Conv", "ConvTranspose"):
        return _conv(kind, a)
    if kind == "Gemm":
        return partial(_gemm, a.get("alpha", 1.0), a.get("beta", 1.0), a.get("transA", 0), a.get("transB", 0))
    if kind == "Clip":
        low, high = (_float_const(arrays, node, i) for i in (1, 2))
        low, high = a.get("min", low), a.get("max", high)
        return lambda x, *_: torch.clamp(x, low, high)
    if kind == "Softmax":
        return partial(torch.softmax, dim=a.get("axis", -1))
    if kind == "Transpose":
        return lambda x: x.permute(*a["perm"]) if "perm" in a else x.permute(*reversed(range(x.dim())))
    if kind == "Slice":
        return partial(_slice, _const(arrays, node, 1), _const(arrays, node, 2), _const(arrays, node, 3),
                       _const(arrays, node, 4))
    if kind == "Gather":
        index = arrays.get(node.input[1])
        if index is not None and np.ndim(index) == 0:  # one index: the axis goes
            return lambda x, _: x.select(a.get("axis", 0), int(index))
        return partial(_gather, a.get("axis", 0))
    if kind in ("MaxPool", "AveragePool"):
        return _pool(kind, a)
    if kind == "GlobalAveragePool":
        return lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
    if kind == "Flatten":
        axis = a.get("axis", 1)
        return lambda x: x.reshape(math.prod(x.shape[:axis]), -1)
    if kind == "Reshape":
        shape = _const(arrays, node, 1)
        return lambda x, *_: x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])
    if kind == "Concat":
        return lambda *xs: torch.cat(xs, dim=a["axis"])
    if kind in ("Unsqueeze", "Squeeze"):
        axes = a.get("axes") or _const(arrays, node, 1)
        return partial(_unsqueeze if kind == "Unsqueeze" else _squeeze, axes)
    if kind == "ReduceMean":
        axes = a.get("axes") or _const(arrays, node, 1)
        return lambda x, *_: x.mean(dim=axes, keepdim=bool(a.get("keepdims", 1)))
    if kind == "BatchNormalization":
        eps = a.get("epsilon", 1e-5)
        return lambda x, w, b, mean, var: F.batch_norm(x, mean, var, w, b, False, 0.0, eps)
    if kind == "LayerNormalization":
        axis, eps = a.get("axis", -1), a.get("epsilon", 1e-5)
        return lambda x, w, b=None: F.layer_norm(x, x.shape[axis:], w, b, eps)
    raise HwpruneError(f"ONNX op {kind} (node {node.name or node.output[0]!r}) has no torch equivalent in "
                       "hwprune's torch runtime")


def _float_const(arrays: dict[str, np.ndarray], node: onnx.NodeProto, index: int) -> float | None:
    if len(node.input) <= index or not node.input[index]:
        return None
    return float(np.asarray(arrays[node.input[index]]).reshape(-1)[0])


def _conv(kind: str, a: dict) -> Op:
    import torch.nn.functional as F

    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise HwpruneError(f"ONNX {kind} with auto_pad {a['auto_pad']!r} has no torch equivalent here")
    rank = len(a["kernel_shape"])
    pads = list(a.get("pads", [0] * 2 * rank))
    strides, dilations, groups = a.get("strides", [1] * rank), a.get("dilations", [1] * rank), a.get("group", 1)
    symmetric = pads[:rank] == pads[rank:]
    if kind == "ConvTranspose":
        if not symmetric:
            raise HwpruneError("ONNX ConvTranspose with asymmetric pads has no torch equivalent here")
        function = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[rank - 1]
        return lambda x, w, b=None: function(x, w, b, strides, pads[:rank], a.get("output_padding", [0] * rank),
                                             groups, dilations)
    function = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    if symmetric:
        return lambda x, w, b=None: function(x, w, b, strides, pads[:rank], dilations, groups)
    padding = [p for i in reversed(range(rank)) for p in (pads[i], pads[rank + i])]  # F.pad: last axis first
    return lambda x, w, b=None: function(F.pad(x, padding), w, b, strides, 0, dilations, groups)


def _pool(kind: str, a: dict) -> Op:
    import torch.nn.functional as F

    rank = len(a["kernel_shape"])
    pads = list(a.get("pads", [0] * 2 * rank))
    if pads[:rank] != pads[rank:]:
        raise HwpruneError(f"ONNX {kind} with asymmetric pads has no torch equivalent here")
    kernel, strides, ceil = a["kernel_shape"], a.get("strides", [1] * rank), bool(a.get("ceil_mode", 0))
    if kind == "MaxPool":
        function = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1]
        return lambda x: function(x, kernel, strides, pads[:rank], a.get("dilations", [1] * rank), ceil)
    function = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
    return lambda x: function(x, kernel, strides, pads[:rank], ceil, bool(a.get("count_include_pad", 0)))


def _gemm(alpha: float, beta: float, trans_a: int, trans_b: int, x, w, c=None):
    import torch

    x, w = (x.t() if trans_a else x), (w.t() if trans_b else w)
    y = torch.matmul(x, w) * alpha if alpha != 1.0 else torch.matmul(x, w)
    return y if c is None else y + (c * beta if beta != 1.0 else c)


def _slice(starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int] | None, x, *_):
    index = [slice(None)] * x.dim()
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        axis = axes[i] if axes else i
        index[axis] = slice(start, min(end, x.shape[axis]), steps[i] if steps else 1)
    return x[tuple(index)]


def _gather(axis: int, x, indices):
    import torch

    return torch.index_select(x, axis, indices.reshape(-1)).reshape(*x.shape[:axis], *indices.shape,
                                                                     *x.shape[axis + 1:])


def _unsqueeze(axes: list[int], x, *_):
    for axis in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(axis)
    return x


def _squeeze(axes: list[int] | None, x, *_):
    return x.squeeze() if not axes else x.squeeze(tuple(axes))
