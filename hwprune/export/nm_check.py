"""Whether the exported ONNX file's weights are really N:M in every layer the plan names.

BatchNorm folded into a conv at export scales its output rows, which keeps every zero, so the
check reads the file as a runtime will. A node is matched to its layer by the module path the
exporter writes into node names (``/block/block.0/Conv``: the layer ``block.0``), or, where the
exporter names nodes otherwise (a rewritten fx graph), by the layer's own zero pattern: the node
whose weight has exactly the zeros of the module's weight. Weights are read in the module's layout
(Conv ``[O, I, kh, kw]``; Gemm ``[O, I]`` with ``transB``, else transposed; MatMul transposed) and
checked by ``sparsity.masks.is_nm``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.plan import NMLayer
from hwprune.sparsity.masks import is_nm

_WEIGHTED = ("Conv", "Gemm", "MatMul")


def nm_weights(path: str | Path, layers: Mapping[str, NMLayer], model: nn.Module | None = None) -> dict[str, dict]:
    """Per named layer: its ONNX node and whether its weight holds at most N non-zeros in every M
    consecutive input channels. ``model`` (the module exported) lets a node be found by its layer's
    zero pattern where its name does not say. A layer with no weighted node in the file is an error."""
    if not layers:
        return {}
    graph = onnx.load(str(path)).graph
    initializers = {init.name: init for init in graph.initializer}
    weighted = [node for node in graph.node
                if node.op_type in _WEIGHTED and len(node.input) > 1 and node.input[1] in initializers]
    by_name: dict[str, onnx.NodeProto] = {}
    for node in weighted:
        parts = node.name.strip("/").split("/")
        if len(parts) >= 2:
            by_name.setdefault(parts[-2], node)
    found = {}
    for name, spec in layers.items():
        node = by_name.get(name) or (_by_zeros(model, name, weighted, initializers) if model is not None else None)
        if node is None:
            raise HwpruneError(f"{path}: no Conv, Gemm or MatMul node of layer {name} with constant weights")
        weight = numpy_helper.to_array(initializers[node.input[1]])
        n, m = spec.n, spec.m
        found[name] = {"node": node.name, "nm": is_nm(_output_first(node, weight), n, m)}
    return found


def _by_zeros(model: nn.Module, name: str, nodes: list[onnx.NodeProto], initializers: dict) -> onnx.NodeProto | None:
    """The node whose weight, in the module's layout (output channels first), has exactly the
    module's zeros."""
    try:
        zeros = (model.get_submodule(name).weight.detach() == 0).cpu().numpy()
    except AttributeError:
        return None
    for node in nodes:
        weight = _output_first(node, numpy_helper.to_array(initializers[node.input[1]]))
        if weight.shape == zeros.shape and np.array_equal(weight == 0, zeros):
            return node
    return None


def _output_first(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    """``weight`` in the module's layout, output channels first and input channels second (a Gemm
    without ``transB`` and a MatMul hold ``[in, out]``)."""
    if node.op_type == "Conv" or any(a.name == "transB" and a.i == 1 for a in node.attribute):
        return weight
    return weight.T
