"""Single-op ONNX graphs for OpSignatures, the unit the profilers time.

The graphs are fp32 whatever the signature's dtype: precision is the runtime's choice (TensorRT's
FP16 flag), and the onnxruntime CPU profiler refuses anything but fp32 signatures.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hwprune.cost.signature import ATTENTION, CONV_OPS, COPY_OPS, OpSignature
from hwprune.errors import HwpruneError

OPSET = 17


def identity_model() -> bytes:
    """One Identity op on one element: timing it gives the cost of a session call itself."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


def input_shape(sig: OpSignature) -> tuple[int, ...]:
    """The shape of the single-op graph's input ``x``."""
    if sig.op in (*CONV_OPS, *COPY_OPS):
        return (sig.batch, sig.c_in, sig.h, sig.w)
    if sig.op == ATTENTION:  # queries, then (cross-attention) keys, along the sequence
        return (sig.batch, sig.c_in, sig.h if sig.h == sig.w else sig.h + sig.w, sig.kernel)
    return (sig.batch, sig.h, sig.c_in)


def single_op_model(sig: OpSignature) -> bytes:
    """A serialized ONNX model computing just ``sig`` (conv2d: Conv; conv_transpose2d: ConvTranspose;
    linear: MatMul + Add; gather:
    Gather of c_out channels spread over c_in; slice: Slice of the first c_out; attention: see
    ``_attention_model``), followed by its epilogue (``_epilogue``). An N:M signature's weights hold N
    non-zeros in every M input channels."""
    rng = np.random.default_rng(0)
    if sig.op in COPY_OPS:
        return _copy_model(sig)
    if sig.op == ATTENTION:
        return _attention_model(sig)
    if sig.op == "conv2d":
        weight = rng.standard_normal((sig.c_out, sig.c_in // sig.groups, sig.kernel, sig.kernel), dtype=np.float32)
        oh, ow = sig.out_hw
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[sig.kernel, sig.kernel],
                                strides=[sig.stride] * 2, pads=[sig.padding] * 4, dilations=[sig.dilation] * 2,
                                group=sig.groups)
        nodes = [node]
        x_shape, y_shape = list(input_shape(sig)), [sig.batch, sig.c_out, oh, ow]
    elif sig.op == "conv_transpose2d":
        weight = rng.standard_normal((sig.c_in, sig.c_out // sig.groups, sig.kernel, sig.kernel), dtype=np.float32)
        oh, ow = sig.out_hw
        nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[sig.kernel, sig.kernel],
                                  strides=[sig.stride] * 2, pads=[sig.padding] * 4, dilations=[sig.dilation] * 2,
                                  output_padding=[sig.output_padding] * 2, group=sig.groups)]
        x_shape, y_shape = list(input_shape(sig)), [sig.batch, sig.c_out, oh, ow]
    elif sig.op == "linear":
        weight = rng.standard_normal((sig.c_in, sig.c_out), dtype=np.float32)
        nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
        x_shape, y_shape = list(input_shape(sig)), [sig.batch, sig.h, sig.c_out]
    else:
        raise HwpruneError(f"no single-op ONNX graph for op {sig.op!r}")
    if sig.sparsity != "dense":
        weight = _nm_zeroed(weight, sig.sparsity, axis=0 if sig.op == "linear" else 1)
    bias = rng.standard_normal((sig.c_out,), dtype=np.float32)
    epilogue, constants = _epilogue(sig, nodes[-1], rng)
    graph = helper.make_graph(
        nodes + epilogue, "op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"), *constants])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _epilogue(sig: OpSignature, last: onnx.NodeProto, rng: np.random.Generator
              ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The epilogue's ops after ``last``, which is made to write their input, and their constants: each op a Mul
    or Add of a constant laid along the output channels as an exporter writes it ((1, C, 1, 1) after a conv, (C,)
    after a linear), the last writing ``y``; so the runtime may fold them into the layer here as in the model."""
    ops = sig.epilogue_ops()
    if not ops:
        return [], []
    shape = (sig.c_out,) if sig.op == "linear" else (1, sig.c_out, 1, 1)
    names = [f"e{i}" for i in range(len(ops))] + [last.output[0]]
    last.output[0] = names[0]
    nodes = [helper.make_node(op.capitalize(), [names[i], f"c{i}"], [names[i + 1]]) for i, op in enumerate(ops)]
    constants = [numpy_helper.from_array(rng.random(shape, dtype=np.float32) + np.float32(0.5), f"c{i}")
                 for i in range(len(ops))]
    return nodes, constants


def _nm_zeroed(weight: np.ndarray, pattern: str, axis: int) -> np.ndarray:
    """``weight`` with only the first N of every M consecutive entries along the reduction axis kept:
    a runtime that accelerates N:M sees the pattern (which entries survive does not change the time)."""
    n, m = (int(part) for part in pattern.split(":"))
    keep = (np.arange(weight.shape[axis]) % m) < n
    shape = [1] * weight.ndim
    shape[axis] = -1
    return weight * keep.reshape(shape).astype(weight.dtype)


def _attention_model(sig: OpSignature) -> bytes:
    """Attention's core as the exporter writes it unfused: MatMul(Q, K^T), a scale, (causal) an additive mask
    of the lowest float over the keys after each query's position, Softmax over the keys, MatMul with V. One
    tensor stands for K and V (the same shapes and work as two); in self-attention Q too, else the input holds
    Q's rows and then K's, split by two Slices."""
    queries, keys = "x", "x"
    nodes, constants = [], [numpy_helper.from_array(np.array(sig.kernel ** -0.5, dtype=np.float32), "scale")]
    if sig.h != sig.w:
        queries, keys = "q", "k"
        for name, start, end in ((queries, 0, sig.h), (keys, sig.h, sig.h + sig.w)):
            constants += [numpy_helper.from_array(np.array([v], dtype=np.int64), f"{name}_{what}")
                          for v, what in ((start, "start"), (end, "end"), (2, "axis"))]
            nodes.append(helper.make_node("Slice", ["x", f"{name}_start", f"{name}_end", f"{name}_axis"], [name]))
    nodes += [helper.make_node("Transpose", [keys], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", [queries, "kt"], ["scores"]),
              helper.make_node("Mul", ["scores", "scale"], ["scaled"])]
    if sig.causal:
        future = np.triu(np.ones((sig.h, sig.w), dtype=bool), k=sig.w - sig.h + 1)
        mask = np.where(future, np.finfo(np.float32).min, 0).astype(np.float32)[None, None]
        constants.append(numpy_helper.from_array(mask, "mask"))
        nodes.append(helper.make_node("Add", ["scaled", "mask"], ["masked"]))
    nodes += [helper.make_node("Softmax", [nodes[-1].output[0]], ["weights"], axis=-1),
              helper.make_node("MatMul", ["weights", keys], ["y"])]
    graph = helper.make_graph(nodes, sig.op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape(sig))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             [sig.batch, sig.c_in, sig.h, sig.kernel])],
                              initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _copy_model(sig: OpSignature) -> bytes:
    x_shape, y_shape = list(input_shape(sig)), [sig.batch, sig.c_out, sig.h, sig.w]
    if sig.op == "gather":
        index = np.linspace(0, sig.c_in - 1, sig.c_out).round().astype(np.int64)
        constants = [numpy_helper.from_array(index, "index")]
        nodes = [helper.make_node("Gather", ["x", "index"], ["y"], axis=1)]
    else:
        constants = [numpy_helper.from_array(np.array(v, dtype=np.int64), n)
                     for v, n in (([0], "starts"), ([sig.c_out], "ends"), ([1], "axes"))]
        nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])]
    graph = helper.make_graph(nodes, sig.op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
