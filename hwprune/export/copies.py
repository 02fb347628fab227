"""Memory-copy ops in an exported graph: how many, and how many bytes they write.

Unconstrained pruning's price is the data movement in front of readers; this counts it in the
ONNX file itself (after shape inference), so naive and reordered exports are compared on what
the runtime will actually execute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, shape_inference

COPY_OPS = ("Gather", "Slice", "Concat")
FLOATING = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def _weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its floating-point initializers' values dropped (their shapes kept): shape inference
    needs only shapes, and serialises the model it is given, which for one over 2 GB a protobuf cannot."""
    for tensor in model.graph.initializer:
        if tensor.data_type in FLOATING:
            for field in ("raw_data", "float_data", "double_data", "int32_data", "external_data"):  # fp16: int32_data
                tensor.ClearField(field)
            tensor.ClearField("data_location")
    return model


def copy_ops(path: str | Path) -> dict[str, dict[str, int]]:
    """Per copy op type over floating-point tensors: ``{"count": ops, "bytes": bytes written per
    inference}``; an op whose output shape cannot be inferred counts with 0 bytes."""
    model = shape_inference.infer_shapes(_weightless(onnx.load(str(path), load_external_data=False)))
    sizes, floating = {}, set()
    for value in [*model.graph.value_info, *model.graph.output]:
        tensor = value.type.tensor_type
        if not tensor.elem_type:
            continue
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
        sizes[value.name] = int(np.prod(dims)) * dtype.itemsize if all(dims) else 0
        if dtype.kind == "f":
            floating.add(value.name)
    found = {op: {"count": 0, "bytes": 0} for op in COPY_OPS}
    for node in model.graph.node:
        # Integer outputs are shape arithmetic (a reshape's target built from Shape -> Gather ->
        # Concat), not activations.
        output = node.output[0]
        if node.op_type in found and (output in floating or output not in sizes):
            found[node.op_type]["count"] += 1
            found[node.op_type]["bytes"] += sizes.get(output, 0)
    return found
