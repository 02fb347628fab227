"""Whether the exported ONNX file's weights are really N:M in every layer the plan names.

BatchNorm folded into a conv at export scales its output rows, which keeps every zero, so the
check reads the file as a runtime will. A node is matched to its layer by the module path the
exporter writes into node names (``/block/block.0/Conv``: the layer ``block.0``); the reduction
axis is the input-channel axis (Conv ``[O, I, kh, kw]``: 1; Gemm: 1 with ``transB``, else 0;
MatMul ``[I, O]``: 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from hwprune.errors import HwpruneError

_WEIGHTED = ("Conv", "Gemm", "MatMul")


def nm_weights(path: str | Path, layers: Mapping[str, dict]) -> dict[str, dict]:
    """Per named layer: its ONNX node and whether its weight holds at most N non-zeros in every M
    consecutive input channels. A layer with no weighted node in the file is an error."""
    if not layers:
        return {}
    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    nodes: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        parts = node.name.strip("/").split("/")
        if node.op_type in _WEIGHTED and len(parts) >= 2 and len(node.input) > 1 and node.input[1] in initializers:
            nodes.setdefault(parts[-2], node)
    found = {}
    for name, spec in layers.items():
        node = nodes.get(name)
        if node is None:
            raise HwpruneError(f"{path}: no Conv, Gemm or MatMul node of layer {name} with constant weights")
        weight = numpy_helper.to_array(initializers[node.input[1]])
        axis = _reduction_axis(node)
        n, m = int(spec["n"]), int(spec["m"])
        found[name] = {"node": node.name, "nm": _is_nm(weight, axis, n, m)}
    return found


def _reduction_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 1 if any(a.name == "transB" and a.i == 1 for a in node.attribute) else 0
    return 0


def _is_nm(weight: np.ndarray, axis: int, n: int, m: int) -> bool:
    moved = np.moveaxis(weight, axis, -1)
    if moved.shape[-1] % m:
        return False
    blocks = moved.reshape(-1, moved.shape[-1] // m, m)
    return bool(((blocks != 0).sum(-1) <= n).all())
